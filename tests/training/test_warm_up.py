"""The worker's warm-up (``worker.prepare``: imports and a tiny fit on random rows, inherited by every
fork-server child) reads nothing of the host beyond the installed code, the system's libraries and its
own home and temporary directory: no table, no state, no other file a task could later find in memory.
What it pays once, a task's Trainer does not pay again: no scan of the installed distributions' metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parents[2]

# In the child: record every path Python opens or lists while prepare() runs (the audit hook sees
# open(), os.listdir and os.scandir, whatever library calls them), then while a task's Trainer is built.
_CHILD = """
import json, os, sys
seen = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        seen.append(os.path.abspath(os.fsdecode(args[0])))
from pod_agent.training import worker
sys.addaudithook(hook)
worker.prepare()
prepared = list(seen)
seen.clear()
import pytorch_lightning as pl
pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
print(json.dumps({"prepare": prepared, "trainer": seen}))
"""


def _installed_roots() -> list[str]:
    """Where the interpreter, its libraries and this package live (real paths too: a venv links them)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(), str(_ROOT / "pod_agent")}
    return sorted({os.path.realpath(r) for r in roots} | roots)


@pytest.fixture(scope="module")
def warm_up(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the child opened during prepare() and during a later Trainer's construction; its home and a
    host directory standing for the pod's table."""
    root = tmp_path_factory.mktemp("warm-up")
    home, host = root / "home", root / "host"
    home.mkdir()
    host.mkdir()
    (host / "data.csv").write_text("age,income\n41,1\n")  # what a pod's table would be: never to be read
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8",
           "MPLCONFIGDIR": str(home / ".mpl"), "PYTHONPATH": str(_ROOT)}
    child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120,
                           cwd=home)
    assert child.returncode == 0, child.stderr
    seen: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return {**seen, "home": str(home), "host": str(host)}


def test_the_warm_up_reads_only_installed_code_and_its_own_scratch(warm_up: dict[str, Any]) -> None:
    seen = warm_up["prepare"]
    allowed = (*_installed_roots(), warm_up["home"], "/usr/", "/proc/", "/sys/", "/dev/")
    assert seen, "the audit hook saw nothing: the check would pass vacuously"
    strays = sorted({path for path in seen if not path.startswith(allowed)})
    assert strays == []
    assert not any(path.startswith(warm_up["host"]) for path in seen)


def test_a_trainer_after_the_warm_up_scans_no_installed_metadata(warm_up: dict[str, Any]) -> None:
    # The warm-up's own Trainer scanned them (the check would be vacuous if it had not).
    assert any(".dist-info" in path for path in warm_up["prepare"])
    assert [path for path in warm_up["trainer"] if ".dist-info" in path or ".egg-info" in path] == []
