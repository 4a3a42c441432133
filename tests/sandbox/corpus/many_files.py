"""Attack: fill the disk with many files, each under the per-file size cap."""


def run(channel):
    block = b"\x00" * (1 << 20)
    written_mb = 0
    try:
        for index in range(100_000):
            with open(channel.work_dir / f"fill{index}.bin", "wb") as handle:
                for _ in range(2):
                    handle.write(block)
                    written_mb += 1
    except OSError as exc:
        return {"stopped_by": f"OSError({exc.errno})", "written_mb": written_mb}, {}
    return {"stopped_by": None, "written_mb": written_mb}, {}
