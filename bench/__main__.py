"""Run every benchmark and write bench/results.json and bench/RESULTS.md.

    python -m bench [--smoke | --full] [--only NAME ...] [--out DIR]

``--smoke`` (the default, what CI runs) uses each module's small size and writes
results-smoke.json / RESULTS-smoke.md, so a smoke pass never overwrites the full
results the README quotes; ``--full`` uses the full sizes the README quotes and writes results.json /
RESULTS.md. Each benchmark runs in a child process of its own (a clean interpreter,
no torch threads or caches carried from one to the next). A module that does not
exist is reported as missing and a module that raises as failed: both make the exit
status non-zero. A goal a benchmark misses (``"ok": false``) is shown, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from bench import BENCHMARKS

_ROOT = Path(__file__).resolve().parent.parent
# The child prints its result after this marker, so a benchmark's own output cannot be mistaken for it.
_MARKER = "@@bench-result@@ "
# Generous caps: a full training benchmark runs several minutes on a 2-core host.
SMOKE_TIMEOUT_S = 900
FULL_TIMEOUT_S = 3 * 3600


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "ok", "missing" or "failed"
    seconds: float
    result: dict[str, Any] | None = None
    error: str | None = None


def machine() -> dict[str, Any]:
    """The host the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        info["torch"] = None
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        info["gpu"] = ", ".join(gpus.stdout.split("\n")).strip(", ") or None
    return info


def _run_one(name: str, *, small: bool, timeout_s: float) -> Outcome:
    started = time.monotonic()
    cmd = [sys.executable, "-m", "bench", "--child", name] + (["--smoke"] if small else ["--full"])
    try:
        done = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Outcome(name, "failed", time.monotonic() - started, error=f"timed out after {timeout_s:g} s")
    seconds = time.monotonic() - started
    results = [line[len(_MARKER):] for line in done.stdout.splitlines() if line.startswith(_MARKER)]
    if done.returncode == 3:
        return Outcome(name, "missing", seconds, error=f"bench/{name}.py does not exist")
    if done.returncode != 0 or not results:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Outcome(name, "failed", seconds, error=f"exit {done.returncode}: {tail}")
    return Outcome(name, "ok", seconds, result=json.loads(results[-1]))


def _child(name: str, *, small: bool) -> int:
    try:
        module = import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return 3
        raise
    result = module.run(small)
    print(_MARKER + json.dumps(result, default=str), flush=True)
    return 0


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def _flatten(result: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Benchmarks ({report['mode']})",
        "",
        f"Run {report['finished_at']} on: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; {m['os']}, Python {m['python']}, torch {m['torch']}.",
        "",
        "| benchmark | status | wall s | goal met |",
        "|---|---|---:|---|",
    ]
    for o in report["benchmarks"]:
        goal = "" if not o["result"] or "ok" not in o["result"] else ("yes" if o["result"]["ok"] else "no")
        status = o["status"] if not o["error"] else f"{o['status']}: {o['error']}"
        lines.append(f"| {o['name']} | {status.replace('|', '/')} | {o['seconds']:.1f} | {goal} |")
    for o in report["benchmarks"]:
        if not o["result"]:
            continue
        lines += ["", f"## {o['name']}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value).replace('|', '/')} |" for key, value in _flatten(o["result"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="small sizes (default; what CI runs)")
    size.add_argument("--full", action="store_true", help="the full sizes the README quotes")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help="run only these")
    parser.add_argument("--out", type=Path, default=_ROOT / "bench", help="where results go (default: bench/)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    small = not args.full
    if args.child:
        return _child(args.child, small=small)

    names = args.only or list(BENCHMARKS)
    timeout_s = SMOKE_TIMEOUT_S if small else FULL_TIMEOUT_S
    report: dict[str, Any] = {"mode": "smoke" if small else "full", "machine": machine(),
                              "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    outcomes = []
    for name in names:
        print(f"bench: {name} ...", flush=True)
        outcome = _run_one(name, small=small, timeout_s=timeout_s)
        print(f"bench: {name} {outcome.status} in {outcome.seconds:.1f} s"
              + (f" ({outcome.error})" if outcome.error else ""), flush=True)
        outcomes.append(outcome)
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["benchmarks"] = [asdict(o) for o in outcomes]
    suffix = "-smoke" if small else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results{suffix}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"RESULTS{suffix}.md").write_text(markdown(report))
    print(f"bench: wrote {args.out / f'results{suffix}.json'} and {args.out / f'RESULTS{suffix}.md'}")
    bad = [o.name for o in outcomes if o.status != "ok"]
    if bad:
        print(f"bench: missing or failed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
