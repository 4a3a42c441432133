"""Attack: write a file twice the size cap into scratch."""


def run(channel):
    limit = channel.request()["max_file_mb"] << 20
    block = b"\x00" * (1 << 20)
    with open(channel.work_dir / "big.bin", "wb") as handle:
        for _ in range(2 * limit // len(block)):
            handle.write(block)
    return {"written": 2 * limit}, {}
