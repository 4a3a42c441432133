"""Attack: allocate (and touch) twice the memory cap in 16 MiB chunks."""

CHUNK = 16 << 20


def run(channel):
    chunks = []
    for _ in range(2 * channel.request()["memory_mb"] // 16):
        chunks.append(b"\x01" * CHUNK)
    return {"allocated_mb": 16 * len(chunks)}, {}
