"""Attack: exit the process without sending a result."""
import os


def run(channel):
    os._exit(0)
