"""Attack: spread twice the memory cap over child processes, then report a made-up failure word
instead of what happened to them."""
import os
import time

CHUNK = 16 << 20


def run(channel):
    share_mb = channel.request()["memory_mb"] // 2
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            chunks = [b"\x01" * CHUNK for _ in range(share_mb // 16)]
            time.sleep(2)
            os._exit(len(chunks) > 0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    channel.fail("diagnosis_hiv")
