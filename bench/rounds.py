"""Benchmark: seconds per federated round on the demo's federation, and where they go.

The federation is the demo's (``pod_agent.demo``: the Adult table split by marital status over
three pods, each a ``pod-agent run`` child process at the host's strongest sandbox level, an
embedded hub, secure FedAvg of the demo's MLP with the demo's plan), built by the demo's own
``prepare_sites`` and ``LocalFederation``. ``--smoke`` keeps the table's first ``SMALL_ROWS``
rows and runs ``SMALL_ROUNDS`` rounds; the full size is the whole table and ``FULL_ROUNDS``.

- ``round_s``: each round's seconds (full size: timed from ``FULL_SETTLE_S`` after the pods are
  online, when their warm pools are parked) as the modeller sees them (publish, train tasks with the
  incoming model evaluated first, the secure round, unmask; the last round's own evaluate task
  is outside them); ``round_median_s`` their median (goal <= 2.5 s on 2 cores, full size).
- ``run_s``: FedAvg.run() end to end (cohort scaling's schema-stats task and the last round's
  evaluation included); ``run_per_round_s`` = run_s / rounds.
- ``pod_stages_median_s``: from the pods' logs (``agent.pipeline._StageClock``), the median over
  every pod's train tasks of: ``input`` (model, weights, prepared rows), ``to_first_step``
  (input ready -> the worker's first training step: waiting for a worker, loading, the
  evaluation of the incoming model), ``training`` (first step -> the worker's answer),
  ``result`` (check, fixed-point encode, masks, upload and the cohort's secure round, which
  includes waiting for the slowest pod).
- ``accepted_to_first_step_s``: task accepted by the pipeline -> first training step, the max
  over every train task (goal <= 0.1 s).

Flower's deployment mode on the same model and data is not run here (yet): with a Flower venv
present the result says so in ``flower``; without one it notes the skip.

    python -m bench.rounds [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SMALL_ROWS, SMALL_ROUNDS = 8000, 2  # the smallest pod keeps >= 100 test rows (privacy.min_rows)
FULL_ROUNDS = 5
# The full size waits this long after the pods are online, so that their warm pools (3 workers each,
# ~3.3 CPU-s of imports apiece) are parked before the clock starts: a federation's pods run for days.
# The smoke size does not (CI's time), so its first rounds include the pools filling.
FULL_SETTLE_S = 30.0
# Flower's venv, as bench/secagg.py looks for it.
FLWR_PYTHON = Path("/tmp/flwr-venv/bin/python")
# agent.pipeline logs one line per sandboxed task: "train task stages: input=0.123s first_step=..."
_STAGES_LINE = re.compile(r"train task stages: ((?:\w+=[0-9.]+s ?)+)")


def run(small: bool) -> dict[str, Any]:
    """The demo federation's round seconds and their breakdown (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="pod-bench-rounds-") as tmp:
        return asyncio.run(_measure(Path(tmp), small=small))


async def _measure(root: Path, *, small: bool) -> dict[str, Any]:
    from pod_agent.config.settings import SecuritySection
    from pod_agent.demo.federation import LocalFederation
    from pod_agent.demo.scenario import DemoOptions, demo_plan, prepare_sites
    from pod_agent.modeller.client import ModellerClient
    from pod_agent.modeller.fedavg import FedAvg
    from pod_agent.protocol import IdentityKey
    from pod_agent.sandbox import best_level, probe_layers

    level = best_level(probe_layers(SecuritySection()))
    rounds = SMALL_ROUNDS if small else FULL_ROUNDS
    sites = await asyncio.to_thread(prepare_sites, root / "data", first_rows=SMALL_ROWS if small else None)
    plan = demo_plan(DemoOptions(out_dir=root, rounds=rounds), [s.name for s in sites])
    modeller = IdentityKey.generate()
    async with LocalFederation(root, sites, modeller=modeller, sandbox=level) as federation:
        async with ModellerClient(federation.hub_url, modeller, pod_keys=federation.pod_keys) as client:
            fedavg = FedAvg(client, plan, work_dir=root / "rounds")
            if not small:
                await asyncio.sleep(FULL_SETTLE_S)
            started = time.monotonic()
            result = await fedavg.run()
            run_s = time.monotonic() - started
        logs = [federation.log_path(site.name) for site in sites]
    round_s = [record.seconds for record in result.report.rounds]
    stages = [_stages(line) for path in logs for line in path.read_text(errors="replace").splitlines()]
    tasks = [s for s in stages if s is not None]
    return {
        "level": level, "rounds": rounds, "pods": len(sites), "rows": f"first {SMALL_ROWS}" if small else "all",
        "round_s": [round(s, 3) for s in round_s], "round_median_s": round(statistics.median(round_s), 3),
        "run_s": round(run_s, 3), "run_per_round_s": round(run_s / rounds, 3),
        "pod_stages_median_s": _median_stages(tasks),
        "accepted_to_first_step_s": round(max((t["first_step"] for t in tasks if "first_step" in t), default=-1), 3),
        "train_tasks_seen": len(tasks),
        "accuracy": round(result.report.rounds[-1].overall.accuracy, 4),
        "flower": _flower_note(),
    }


def _stages(line: str) -> dict[str, float] | None:
    """A pod log line's stage marks (seconds from the task's start), or None for any other line."""
    found = _STAGES_LINE.search(line)
    if found is None:
        return None
    return {name: float(value) for name, value in re.findall(r"(\w+)=([0-9.]+)s", found.group(1))}


def _median_stages(tasks: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's own length (its mark minus the one before), median over the tasks that have it."""
    spans: dict[str, list[float]] = {"input": [], "to_first_step": [], "training": [], "result": []}
    for t in tasks:
        if not {"input", "first_step", "sandbox", "result"} <= t.keys():
            continue
        spans["input"].append(t["input"])
        spans["to_first_step"].append(t["first_step"] - t["input"])
        spans["training"].append(t["sandbox"] - t["first_step"])
        spans["result"].append(t["result"] - t["sandbox"])
    return {name: round(statistics.median(values), 3) for name, values in spans.items() if values}


def _flower_note() -> dict[str, str]:
    if not FLWR_PYTHON.exists():
        note = f"skipped: no Flower venv at {FLWR_PYTHON}"
    else:
        note = "skipped: Flower's deployment-mode round is not yet scripted here (see issue 15)"
    print(f"bench.rounds: Flower comparison {note}", flush=True)
    return {"skipped": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the smoke size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(args.small), indent=2))


if __name__ == "__main__":
    main()
