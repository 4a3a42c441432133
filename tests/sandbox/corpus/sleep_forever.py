"""Attack: sleep past the wall-clock limit."""
import time


def run(channel):
    time.sleep(3600)
