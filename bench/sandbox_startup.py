"""Benchmark: what confinement costs at start-up, and what the warm worker saves.

For a trivial task (the entry returns at once) it measures, over N starts each:

- ``none``:        level none (plain child process, rlimits + cgroup only)
- ``strict``:      level strict (dedicated uid, bwrap namespaces, seccomp, rlimits, cgroup)
- ``strict_warm``: level strict with a warm worker already parked (confined, past prepare())

per start (after one uncounted warm-up start): ``first_request_s`` (runner.run() called -> the child
holds the request) and ``total_s`` (runner.run() called -> outcome returned, including tearing the tree down).
Medians are reported; ``overhead_s`` is strict minus none.

This file is also the trivial entry module the workers import (``prepare``/``serve``).

    python -m bench.sandbox_startup [--small] [--json]     (as root, with bubblewrap; 20 starts, 5 with --small)
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

STARTS = 20
SMALL_STARTS = 5
ENTRY = "sandbox_startup"


def prepare() -> None:
    """Nothing to import: the benchmark measures the sandbox, not torch."""


def serve(channel: Any) -> None:
    channel.result({"t_request": time.time()}, b"")


async def _measure(level: str, *, warm: bool, starts: int) -> dict[str, Any]:
    from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
    from pod_agent.sandbox import SandboxJob, SandboxRunner

    here = Path(__file__).resolve().parent
    firsts: list[float] = []
    totals: list[float] = []
    limits = SandboxLimitsSection(wall_timeout_s=60, memory_mb=512, warm_worker=warm)
    with tempfile.TemporaryDirectory(prefix="pod-bench-sandbox-") as tmp:
        async with SandboxRunner(SecuritySection(sandbox=level), limits) as runner:  # type: ignore[arg-type]
            if warm:
                await runner.prewarm(ENTRY, entry_path=here)
            # Start 0 warms the page cache and the probe; it is not counted.
            for index in range(starts + 1):
                input_dir = Path(tmp) / f"in{index}"
                input_dir.mkdir()
                if warm:
                    await runner.wait_warm(ENTRY, entry_path=here)
                started_wall, started = time.time(), time.perf_counter()
                outcome = await runner.run(
                    SandboxJob(
                        entry=ENTRY, input_dir=input_dir, work_dir=Path(tmp) / f"w{index}", request={}, entry_path=here
                    )
                )
                if index:
                    totals.append(time.perf_counter() - started)
                    firsts.append(float(outcome.header["t_request"]) - started_wall)
            layers = sorted(runner.layers)
    return {"level": level, "warm": warm, "starts": starts, "layers": layers,
            "first_request_s": round(statistics.median(firsts), 4), "total_s": round(statistics.median(totals), 4)}


def run(small: bool) -> dict[str, Any]:
    """Median start-up of a trivial task under none, strict and strict with a warm worker."""
    starts = SMALL_STARTS if small else STARTS

    async def _all() -> dict[str, Any]:
        none = await _measure("none", warm=False, starts=starts)
        strict = await _measure("strict", warm=False, starts=starts)
        warm = await _measure("strict", warm=True, starts=starts)
        return {"none": none, "strict": strict, "strict_warm": warm,
                "overhead_s": round(strict["total_s"] - none["total_s"], 4)}

    return asyncio.run(_all())


def _print(result: dict[str, Any]) -> None:
    print(f"sandbox start-up, trivial task, median of {result['none']['starts']} starts")
    print(f"{'mode':<12} {'first request s':>16} {'total s':>9}  layers")
    for mode in ("none", "strict", "strict_warm"):
        entry = result[mode]
        print(f"{mode:<12} {entry['first_request_s']:>16} {entry['total_s']:>9}  {', '.join(entry['layers'])}")
    print(f"strict - none overhead: {result['overhead_s']} s")


def main() -> None:
    # Imported here: the sandbox imports this module as its entry with only bench/ on its path.
    from bench.cli import parser_for, show

    args = parser_for(__doc__, small_help=f"{SMALL_STARTS} starts instead of {STARTS}").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
