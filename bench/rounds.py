"""Benchmark: seconds per federated round on the demo's federation, and where they go.

The federation is the demo's (``pod_agent.demo``: the Adult table split by marital status over
three pods, each a ``pod-agent run`` child process at the host's strongest sandbox level, an
embedded hub, secure FedAvg of the demo's MLP with the demo's plan), built by the demo's own
``prepare_sites`` and ``LocalFederation``. ``--smoke`` keeps the table's first ``SMALL_ROWS``
rows and runs ``SMALL_ROUNDS`` rounds; the full size is the whole table and ``FULL_ROUNDS``.

- ``round_s``: each round's seconds (full size: timed from ``FULL_SETTLE_S`` after the pods are
  online, when their fork servers, or warm pools, are ready) as the modeller sees them (publish,
  train tasks with the incoming model evaluated first, the secure round, unmask; the last round's own evaluate task
  is outside them); ``round_median_s`` their median (goal <= 2.5 s on 2 cores, full size).
- ``run_s``: FedAvg.run() end to end (cohort scaling's schema-stats task and the last round's
  evaluation included); ``run_per_round_s`` = run_s / rounds.
- ``pod_stages_median_s``: from the pods' logs (``agent.pipeline._StageClock``), the median over
  every pod's train tasks of: ``input`` (accepted -> model, weights, prepared rows in place),
  ``to_first_step`` (input ready -> the worker's first training step: taking the forked child,
  loading the model and rows), ``training`` (first step -> the worker's answer, the incoming
  model's evaluation after training included), and the result split three ways: ``encode`` (the
  contract's check, fixed-point encode, masking), ``upload`` (release recorded, masked vector sent)
  and ``aggregate_wait`` (the secure round's waits for the cohort's keys, shares, survivors and
  unmasking, so for the slowest pod); ``result`` is those three together.
- ``accepted_to_first_step_s``: task accepted by the pipeline -> first training step (goal <= 0.1 s
  for every task): median, worst and each train task's value.
- ``flower``: Flower's deployment mode on the same federation, when the Flower venv is there
  (``FLWR_PYTHON``, as bench/secagg.py finds it; without it the result notes the skip; the smoke
  size leaves it out): a SuperLink and one SuperNode per pod on loopback, ``flwr run`` of
  ``bench/flower_app`` (the demo's MLP as plain torch, this venv's torch lent to the Flower venv
  by PYTHONPATH; AdamW at the plan's rate, batch size and epochs; each pod's rows as the pod
  prepares them; FedAvg from the same seeded initial weights; every pod trains and evaluates
  each round, Flower's default process-per-message isolation). ``round_s`` are the ServerApp's
  round ends; ``flower_over_pod_agent`` the ratio of the medians (goal >= 5).
- ``pod_stages_median_s.wait_for_worker``: from the pods' logs (``sandbox.runner``), how long a
  task waited for its worker (a fork-server child, a parked worker, or a cold start).

    python -m bench.rounds [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SMALL_ROWS, SMALL_ROUNDS = 8000, 2  # the smallest pod keeps >= 100 test rows (privacy.min_rows)
FULL_ROUNDS = 5
# The full size waits this long after the pods are online, so that their fork servers (a zygote each,
# ~3.5 CPU-s of imports; where forks are unavailable, warm pools of 3 workers) are ready before the clock
# starts: a federation's pods run for days. The smoke size does not (CI's time).
FULL_SETTLE_S = 30.0
# Flower's venv, as bench/secagg.py looks for it.
FLWR_PYTHON = Path("/tmp/flwr-venv/bin/python")
# agent.pipeline logs one line per sandboxed task: "train task stages: input=0.123s first_step=..."
_STAGES_LINE = re.compile(r"train task stages: ((?:\w+=[0-9.]+s ?)+)")
# sandbox.runner logs how long each task waited for its worker (a child forked ahead or just now, a pool's
# parked worker, or a cold start).
_WORKER_LINE = re.compile(r"sandbox (parked|fork|pool|cold) worker ready in ([0-9.]+) s")
# bench/flower_app: the demo's model as a Flower App, run by the Flower venv.
FLOWER_APP = Path(__file__).parent / "flower_app"
FLOWER_TIMEOUT_S = 900


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
    lines = [line for path in logs for line in path.read_text(errors="replace").splitlines()]
    tasks = [s for s in map(_stages, lines) if s is not None]
    first_steps = [t["first_step"] for t in tasks if "first_step" in t]
    waits = [float(m.group(2)) for m in map(_WORKER_LINE.search, lines) if m is not None]
    median_s = statistics.median(round_s)
    flower = _flower(root / "flower", sites, plan, rounds) if not small else {
        "skipped": "the smoke size leaves Flower out (minutes a round: a fresh process per message); full size runs it"}
    ratio = round(flower["round_median_s"] / median_s, 2) if "round_median_s" in flower else None
    print(f"bench.rounds: pod-agent {median_s:.2f} s a round, Flower "
          f"{flower.get('round_median_s', '-')} s: Flower / pod-agent = {ratio}", flush=True)
    return {
        "level": level, "rounds": rounds, "pods": len(sites), "rows": f"first {SMALL_ROWS}" if small else "all",
        "round_s": [round(s, 3) for s in round_s], "round_median_s": round(median_s, 3),
        "run_s": round(run_s, 3), "run_per_round_s": round(run_s / rounds, 3),
        "pod_stages_median_s": {"wait_for_worker": round(statistics.median(waits), 3) if waits else None,
                                **_median_stages(tasks)},
        "accepted_to_first_step_s": {"median": round(statistics.median(first_steps), 3) if first_steps else None,
                                     "worst": round(max(first_steps), 3) if first_steps else None,
                                     "each": [round(f, 3) for f in first_steps]},
        "sandbox_tasks_seen": len(tasks),
        "accuracy": round(result.report.rounds[-1].overall.accuracy, 4),
        "flower": flower,
        "flower_over_pod_agent": ratio,
    }


def _stages(line: str) -> dict[str, float] | None:
    """A pod log line's stage marks (seconds from the task's start), or None for any other line."""
    found = _STAGES_LINE.search(line)
    if found is None:
        return None
    return {name: float(value) for name, value in re.findall(r"(\w+)=([0-9.]+)s", found.group(1))}


def _spans(t: dict[str, float]) -> dict[str, float]:
    """One train task's stages as lengths: input, to_first_step, training, then its result split into
    encode (the contract's check, fixed-point encode, masking), upload (release recorded, masked vector
    sent) and aggregate_wait (the secure round's waits for the cohort: keys, shares, survivors, unmasking);
    ``result`` is the three together. Empty for a task without every mark (not a secure train task)."""
    marks = ("input", "first_step", "sandbox", "checked", "encoded", "masking", "masked", "uploaded", "result")
    if not set(marks) <= t.keys():
        return {}
    return {
        "input": t["input"], "to_first_step": t["first_step"] - t["input"], "training": t["sandbox"] - t["first_step"],
        "encode": (t["encoded"] - t["sandbox"]) + (t["masked"] - t["masking"]),
        "upload": t["uploaded"] - t["masked"],
        "aggregate_wait": (t["masking"] - t["encoded"]) + (t["result"] - t["uploaded"]),
        "result": t["result"] - t["sandbox"],
    }


def _median_stages(tasks: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's length (``_spans``), median over the tasks that have it."""
    spans = [s for s in map(_spans, tasks) if s]
    return {name: round(statistics.median(s[name] for s in spans), 3) for name in (spans[0] if spans else {})}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _flower_inputs(root: Path, sites: list[Any], plan: Any) -> tuple[list[Path], Path, int]:
    """Each pod's rows prepared as the pod prepares them (its own encoding and split), as .npz for the
    Flower venv, and the initial weights FedAvg starts from (the seeded model every pod builds)."""
    import numpy as np
    import pyarrow as pa

    from pod_agent.config.settings import DatasourceSection
    from pod_agent.data import DATA_FILE_NAME, SPLIT_CODES, dense_x, open_datasource, prepare_task_input
    from pod_agent.protocol import Hyperparameters
    from pod_agent.training import initial_weights

    paths, datastructure, classes = [], None, 0
    for site in sites:
        ds = open_datasource(DatasourceSection.model_validate({"path": site.data, "force_stypes": site.force_stypes}))
        prepared = prepare_task_input(ds, ds.schema(), plan.selection, root / site.name, share_categories=False)
        table = pa.ipc.open_file(pa.memory_map(str(root / site.name / DATA_FILE_NAME))).read_all()
        x = dense_x(table)
        y = table.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
        split = table.column(2).to_numpy(zero_copy_only=False)
        arrays = {f"{part}_{name}": values[split == SPLIT_CODES[name]]
                  for name in ("train", "test") for part, values in (("x", x), ("y", y))}
        paths.append(root / f"{site.name}.npz")
        np.savez(paths[-1], **arrays)
        datastructure, classes = prepared.datastructure, max(classes, int(y.max()) + 1)
    hyper = Hyperparameters(epochs=plan.epochs_per_round, batch_size=plan.batch_size,
                            learning_rate=plan.learning_rate, seed=plan.seed)
    weights = initial_weights(plan.model, datastructure=datastructure or {}, hyperparameters=hyper)
    # The module's parameter names without the PodModel's attribute prefix: nn.Sequential's own.
    initial = root / "initial.npz"
    np.savez(initial, **{name.split(".", 1)[1]: value for name, value in weights.items()})
    return paths, initial, classes


def _torch_for_flower(root: Path) -> Path:
    """A directory holding only torch and its pure-Python dependencies from this venv, for the Flower
    venv's PYTHONPATH: the Flower side runs the very same torch on the same model."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    shim = root / "torch-only"
    shim.mkdir()
    for name in ("torch", "torchgen", "functorch", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
                 "filelock", "fsspec"):
        if (site / name).exists():
            (shim / name).symlink_to(site / name)
    return shim


def _flower(root: Path, sites: list[Any], plan: Any, rounds: int) -> dict[str, Any]:
    """Flower's deployment mode on the same federation: a SuperLink, one SuperNode per pod (each ClientApp
    a fresh process, Flower's default isolation), ``flwr run`` of bench/flower_app; seconds per round from
    the ServerApp's round ends (after every pod trained and evaluated)."""
    if not FLWR_PYTHON.exists():
        note = f"skipped: no Flower venv at {FLWR_PYTHON} (python3 -m venv it; pip install flwr)"
        print(f"bench.rounds: Flower comparison {note}", flush=True)
        return {"skipped": note}
    root.mkdir()
    data, initial, classes = _flower_inputs(root, sites, plan)
    bin_dir, port = FLWR_PYTHON.parent, _free_port()
    home = root / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(root), "FLWR_HOME": str(home),
           "PYTHONPATH": str(_torch_for_flower(root))}
    times = root / "round_times.json"
    procs: list[subprocess.Popen[bytes]] = []
    logs = root / "logs"
    logs.mkdir()

    def spawn(name: str, *argv: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen([str(bin_dir / argv[0]), *argv[1:]], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=root, start_new_session=True))

    try:
        spawn("superlink", "flower-superlink", "--insecure", "--port", str(port),
              "--database", str(root / "state.db"))
        _wait_for_port(port)
        for index, path in enumerate(data):
            spawn(f"supernode-{index}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--port", str(_free_port()), "--node-config", f'data="{path}" classes={classes}')
        config = (f'num-server-rounds={rounds} learning-rate={plan.learning_rate} batch-size={plan.batch_size} '
                  f'local-epochs={plan.epochs_per_round} pods={len(data)} initial-weights="{initial}" '
                  f'round-times="{times}"')
        started = time.monotonic()
        done = subprocess.run([str(bin_dir / "flwr"), "run", str(FLOWER_APP), "bench", "--stream", "--run-config",
                               config], env=env, cwd=root, capture_output=True, timeout=FLOWER_TIMEOUT_S,
                              check=False)
        run_s = time.monotonic() - started
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if done.returncode != 0 or not times.exists():
        tail = (done.stdout + done.stderr).decode("utf-8", "replace").strip().splitlines()[-5:]
        return {"failed": f"flwr run exited {done.returncode}: {' | '.join(tail)}"}
    recorded = json.loads(times.read_text())
    ends = recorded["ends"]
    round_s = [later - earlier for earlier, later in itertools.pairwise(ends)]
    return {"round_s": [round(r, 3) for r in round_s], "round_median_s": round(statistics.median(round_s), 3),
            "run_s": round(run_s, 3), "accuracy": recorded["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the smoke size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(args.small), indent=2))


if __name__ == "__main__":
    main()
