"""Benchmark: wall time of CLI commands that need no torch (goal < 0.5 s each, median of the runs).

Each command runs as a fresh process, as an operator types it, interleaved round by round with
two baselines, so that a loaded host slows all alike:

- ``python``:         the venv's interpreter doing nothing (``python -c pass``): the floor
- ``aiohttp``:        the interpreter importing aiohttp, what ``modeller pods`` paid before its JSON
                      requests left aiohttp (``protocol.hub_oneshot``)
- ``--help``:         the command list (no command module imported)
- ``keys show``:      a pod's key and pin line, from a pod.toml made with ``pod-agent init``
- ``modeller pods``:  a signed request to a reference hub (started once, not timed)

The goal applies to the three commands. Figures: README, Benchmarks, "CLI start-up".

    python -m bench.cli_startup [--small] [--json]      (9 runs each, 3 with --small)
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import parser_for, show

RUNS = 9
SMALL_RUNS = 3
GOAL_S = 0.5
_POD_AGENT = str(Path(sys.executable).parent / "pod-agent")


COMMANDS = ("help", "keys_show", "modeller_pods")


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(commands: dict[str, list[str]], runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU (user + system) seconds of ``runs`` runs of each command, one of each per round;
    raises if one fails. On a loaded host wall time grows with the load, CPU time much less."""
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            started, cpu = time.perf_counter(), _child_cpu_s()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            walls[name].append(time.perf_counter() - started)
            cpus[name].append(_child_cpu_s() - cpu)
    median = statistics.median
    return {n: median(v) for n, v in walls.items()}, {n: median(v) for n, v in cpus.items()}


def _setup(root: Path, hub_url: str) -> tuple[Path, Path]:
    """A pod.toml (``init``) and a modeller key registered at the hub."""
    config, key = root / "pod.toml", root / "modeller.pem"
    data = root / "data.csv"
    data.write_text("age,label\n" + "".join(f"{20 + i % 50},{i % 2}\n" for i in range(100)))
    subprocess.run([_POD_AGENT, "init", "--config", str(config), "--name", "bench", "--data", str(data),
                    "--state-dir", str(root / "state")], check=True, capture_output=True)
    modeller = [_POD_AGENT, "modeller", "--hub", hub_url, "--key", str(key)]
    subprocess.run([*modeller, "keys", "--generate"], check=True, capture_output=True)
    subprocess.run([*modeller, "register", "--name", "bench"], check=True, capture_output=True)
    return config, key


def run(small: bool) -> dict[str, Any]:
    runs = SMALL_RUNS if small else RUNS
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        root = Path(tmp)
        hub = subprocess.Popen([_POD_AGENT, "hub", "serve", "--db", str(root / "hub.sqlite"), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert hub.stdout is not None
            url = hub.stdout.readline().split("hub listening on", 1)[1].strip()
            config, key = _setup(root, url)
            seconds, cpu_seconds = _timed({
                "python": [sys.executable, "-c", "pass"],
                "aiohttp": [sys.executable, "-c", "import aiohttp"],
                "help": [_POD_AGENT, "--help"],
                "keys_show": [_POD_AGENT, "keys", "show", "--config", str(config)],
                "modeller_pods": [_POD_AGENT, "modeller", "--hub", url, "--key", str(key), "pods"],
            }, runs)
        finally:
            hub.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                hub.wait(15)
            if hub.stdout is not None:
                hub.stdout.close()
    return {
        "runs": runs,
        "median_s": {name: round(s, 3) for name, s in seconds.items()},
        "median_cpu_s": {name: round(s, 3) for name, s in cpu_seconds.items()},
        "goal_s": GOAL_S,
        "ok": all(seconds[name] < GOAL_S for name in COMMANDS),
    }


def _print(result: dict[str, Any]) -> None:
    wall, cpu = result["median_s"], result["median_cpu_s"]
    print(f"CLI start-up, median of {result['runs']} interleaved runs (goal < {GOAL_S} s wall each):")
    labels = {"python": "python -c pass", "aiohttp": "python -c 'import aiohttp'", "help": "--help",
              "keys_show": "keys show", "modeller_pods": "modeller pods"}
    for name, label in labels.items():
        print(f"  {label:<28} wall {wall[name]:.3f} s   cpu {cpu[name]:.3f} s")


def main() -> None:
    args = parser_for(__doc__, small_help=f"{SMALL_RUNS} runs each instead of {RUNS}").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
