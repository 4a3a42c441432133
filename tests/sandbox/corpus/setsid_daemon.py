"""Attack: double-fork a setsid daemon that keeps the inherited stderr pipe open, then stall."""
import os
import time


def run(channel):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                time.sleep(1)
        os._exit(0)
    time.sleep(3600)
