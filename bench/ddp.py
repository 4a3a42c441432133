"""Benchmark: data-parallel training (Lightning DDP, gloo) with 2 ranks on CPU against one process.

The same train task (bench.training's tutorial MLP on prepared Adult data, same epochs, seed
and batch size) through the real SandboxRunner at the best level here, three ways, interleaved
``REPEATS`` times (the fastest run of each counts: other load only adds time):

- ``one_s``:      one process, one torch thread (the pod's default, ``DEFAULT_THREADS``);
- ``threads_s``:  one process, two torch threads: what a competent user does with two cores;
- ``ranks_s``:    two DDP ranks of one thread each (``training.devices = 2``).

Each figure is the worker's first training step -> result (training, the final validation and
the answer; DDP's fork and rendezvous included), so the workers' start-up (torch imports) is
left out. ``speedup`` is one_s / ranks_s and ``speedup_vs_threads`` threads_s / ranks_s. On a
2-core host shared with other work, two ranks (each validating the whole split, and averaging
gradients over loopback TCP every step) can be slower than one process: the numbers say so.

    python -m bench.ddp [--small] [--json]
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import parser_for, show
from bench.training import ENTRY, SANDBOX_USER, _best_level, _prepare, _stage, _task

FULL_EPOCHS = 2
SMALL_EPOCHS = 1
FULL_REPEATS = 3
SMALL_REPEATS = 1
# (ranks, torch threads per rank) of each way; the smoke size leaves out the two-thread process.
WAYS = {"one_s": (1, 1), "threads_s": (1, 2), "ranks_s": (2, 1)}
SMALL_WAYS = ("one_s", "ranks_s")


async def _train_seconds(data_path: Path, datastructure: dict[str, Any], root: Path, *, ranks: int, threads: int,
                         epochs: int, level: str) -> float:
    """One train task on a cold worker; seconds from its first training step to its result."""
    from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
    from pod_agent.sandbox import SandboxJob, SandboxRunner

    case, request = _stage(data_path, root, _task(epochs), datastructure, threads)
    request["trainer"]["devices"] = ranks
    limits = SandboxLimitsSection(wall_timeout_s=900, cpu_time_s=3600, memory_mb=4096, warm_worker=False)
    first_step: list[float] = []

    def on_progress(event: dict[str, Any]) -> None:
        if not first_step and event.get("stage") == "training":
            first_step.append(time.perf_counter())

    async with SandboxRunner(SecuritySection(sandbox=level, sandbox_user=SANDBOX_USER),  # type: ignore[arg-type]
                             limits, devices=ranks) as runner:
        await runner.run(SandboxJob(entry=ENTRY, input_dir=case / "input", work_dir=case / "work", request=request),
                         on_progress=on_progress)
        return time.perf_counter() - first_step[0]


def run(small: bool) -> dict[str, Any]:
    """The three ways on the same task, interleaved; fastest of each and every run."""
    epochs = SMALL_EPOCHS if small else FULL_EPOCHS
    ways = SMALL_WAYS if small else tuple(WAYS)
    level = _best_level()
    runs: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="pod-bench-ddp-") as tmp:
        root = Path(tmp)
        data_path, datastructure = _prepare(root, small=small)
        for _ in range(SMALL_REPEATS if small else FULL_REPEATS):
            for way in ways:
                ranks, threads = WAYS[way]
                runs[way].append(asyncio.run(_train_seconds(data_path, datastructure, root, ranks=ranks,
                                                            threads=threads, epochs=epochs, level=level)))
    best = {way: round(min(times), 3) for way, times in runs.items()}
    result: dict[str, Any] = {
        "level": level, "epochs": epochs, "train_rows": datastructure["n_rows"]["train"], "cpus": os.cpu_count(),
        **best, "runs_s": {way: [round(t, 3) for t in times] for way, times in runs.items()},
        "speedup": round(best["one_s"] / best["ranks_s"], 3),
    }
    if "threads_s" in best:
        result["speedup_vs_threads"] = round(best["threads_s"] / best["ranks_s"], 3)
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"DDP on CPU, tutorial MLP on Adult ({result['train_rows']} train rows, {result['epochs']} epoch(s), "
          f"{result['cpus']} CPUs, sandbox level {result['level']}); first step -> result, fastest run")
    print(f"one process, 1 thread:   {result['one_s']:>8.3f} s   runs {result['runs_s']['one_s']}")
    if "threads_s" in result:
        print(f"one process, 2 threads:  {result['threads_s']:>8.3f} s   runs {result['runs_s']['threads_s']}")
    print(f"2 DDP ranks, 1 thread:   {result['ranks_s']:>8.3f} s   runs {result['runs_s']['ranks_s']}")
    print(f"speed-up of 2 ranks over one process: {result['speedup']:.3f}"
          + (f", over 2 threads: {result['speedup_vs_threads']:.3f}" if "speedup_vs_threads" in result else ""))


def main() -> None:
    parser = parser_for(__doc__, small_help=f"smoke size: {SMALL_EPOCHS} epoch, one run of 1 rank and of 2 ranks")
    args = parser.parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
