"""Attack: dodge the per-process data limit by splitting twice the memory cap over four processes."""
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
    statuses = [os.waitpid(pid, 0)[1] for pid in children]
    return {"statuses": statuses}, {}
