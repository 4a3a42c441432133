"""Benchmark: CPU an idle agent uses (goal < 1 % of one core), and how fast it starts.

Starts a reference hub and one agent (``pod-agent run``, default heartbeat of 15 s,
health endpoint on, no warm worker, sandbox level none so the probe does not need root) as real
processes on 127.0.0.1 with a small CSV, waits until the agent is registered,
then reads the agent's CPU time (utime + stime from /proc) over a quiet window:

- ``start_to_registered_s``: process start -> the hub has the pod registered
- ``cpu_percent``:           CPU time / wall time over the window, in % of one core
- ``rss_mb``:                resident memory of the idle agent

    python -m bench.idle_agent [--small] [--json]      (window 60 s, 10 s with --small)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import parser_for, show

WINDOW_S = 60.0
SMALL_WINDOW_S = 10.0
GOAL_CPU_PERCENT = 1.0
_POD_AGENT = str(Path(sys.executable).parent / "pod-agent")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); after the ")" split they are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _registered(db: Path, name: str) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=1)) as conn:
            return bool(conn.execute("SELECT 1 FROM pods WHERE name = ?", (name,)).fetchone())
    except sqlite3.Error:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(root: Path, hub_url: str) -> Path:
    from pod_agent.protocol import IdentityKey

    state = root / "pod"
    state.mkdir()
    IdentityKey.generate().save(state / "identity.pem")
    data = root / "data.csv"
    data.write_text("age,hours,label\n" + "".join(f"{20 + i % 50},{i % 60},{i % 2}\n" for i in range(1000)))
    config = root / "pod.toml"
    config.write_text(
        f'[pod]\nname = "idle"\nstate_dir = "{state}"\n[hub]\nurl = "{hub_url}"\n'
        f'[datasource]\npath = "{data}"\n[security]\nsandbox = "none"\n'
        f"[sandbox_limits]\nwarm_worker = false\n[ops]\nhealth_port = {_free_port()}\n"
    )
    return config


def run(small: bool) -> dict[str, Any]:
    window_s = SMALL_WINDOW_S if small else WINDOW_S
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        root = Path(tmp)
        db = root / "hub.sqlite"
        hub = subprocess.Popen([_POD_AGENT, "hub", "serve", "--db", str(db), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        agent = None
        try:
            assert hub.stdout is not None
            url = hub.stdout.readline().decode().split("hub listening on", 1)[1].strip()
            config = _config(root, url)
            started = time.monotonic()
            agent = subprocess.Popen([_POD_AGENT, "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not _registered(db, "idle"):
                if agent.poll() is not None or time.monotonic() - started > 60:
                    raise RuntimeError("the agent did not register within 60 s")
                time.sleep(0.02)
            registered_s = time.monotonic() - started
            time.sleep(1.0)  # let start-up work (schema pass, first heartbeat) finish
            cpu_before, wall_before = _cpu_seconds(agent.pid), time.monotonic()
            time.sleep(window_s)
            cpu = _cpu_seconds(agent.pid) - cpu_before
            wall = time.monotonic() - wall_before
            percent = 100.0 * cpu / wall
            return {
                "start_to_registered_s": round(registered_s, 3),
                "window_s": round(wall, 1),
                "cpu_percent": round(percent, 3),
                "rss_mb": round(_rss_mb(agent.pid), 1),
                "goal_cpu_percent": GOAL_CPU_PERCENT,
                "ok": percent < GOAL_CPU_PERCENT,
            }
        finally:
            for proc in (agent, hub):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(15)
            if hub.stdout is not None:
                hub.stdout.close()


def _print(result: dict[str, Any]) -> None:
    print(f"idle agent: {result['cpu_percent']} % of one core over {result['window_s']} s "
          f"(goal < {GOAL_CPU_PERCENT} %), RSS {result['rss_mb']} MB, "
          f"registered {result['start_to_registered_s']} s after start")


def main() -> None:
    args = parser_for(__doc__, small_help=f"{SMALL_WINDOW_S:g} s window instead of {WINDOW_S:g} s").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
