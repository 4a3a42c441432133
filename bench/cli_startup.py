"""Benchmark: wall time of CLI commands that need no torch (goal < 0.5 s each, median of the runs).

Each command runs as a fresh process, as an operator types it:

- ``--help``:         the command list (no command module imported)
- ``keys show``:      a pod's key and pin line, from a pod.toml made with ``pod-agent init``
- ``modeller pods``:  a signed request to a reference hub (started once, not timed)

    python -m bench.cli_startup [--small] [--json]      (9 runs each, 3 with --small)
"""

from __future__ import annotations

import contextlib
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


def _timed(argv: list[str], runs: int) -> float:
    """Median wall seconds of ``runs`` runs of ``argv``; raises if one fails."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


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
            seconds = {
                "help": _timed([_POD_AGENT, "--help"], runs),
                "keys_show": _timed([_POD_AGENT, "keys", "show", "--config", str(config)], runs),
                "modeller_pods": _timed([_POD_AGENT, "modeller", "--hub", url, "--key", str(key), "pods"], runs),
            }
        finally:
            hub.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                hub.wait(15)
            if hub.stdout is not None:
                hub.stdout.close()
    return {
        "runs": runs,
        "median_s": {name: round(s, 3) for name, s in seconds.items()},
        "goal_s": GOAL_S,
        "ok": all(s < GOAL_S for s in seconds.values()),
    }


def _print(result: dict[str, Any]) -> None:
    cells = ", ".join(f"{name} {s:.3f} s" for name, s in result["median_s"].items())
    print(f"CLI start-up (median of {result['runs']}): {cells} (goal < {GOAL_S} s each)")


def main() -> None:
    args = parser_for(__doc__, small_help=f"{SMALL_RUNS} runs each instead of {RUNS}").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
