"""A prepared worker writes nothing to stderr for known-benign noise: fontconfig without /etc/fonts,
Lightning's warning about an IterableDataset with ``__len__``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]

# In the child: prepare as the sandbox does, then meet both noises where they start.
_CHILD = """
import subprocess
from pod_agent.training import worker
worker.prepare()
from torch.utils.data import DataLoader, IterableDataset
from lightning_fabric.utilities.data import has_len

class Rows(IterableDataset):
    def __iter__(self):
        return iter(range(4))
    def __len__(self):
        return 4

assert has_len(DataLoader(Rows()))
subprocess.run(["fc-list"], check=True, stdout=subprocess.DEVNULL)
"""


def _without_etc_fonts(argv: list[str], home: Path) -> list[str]:
    """``argv`` in a bwrap with the system's files but no /etc (the sandbox binds no /etc/fonts)."""
    binds = [arg for top in ("/usr", "/bin", "/lib", "/lib64", "/sbin") if Path(top).exists()
             for arg in ("--ro-bind", top, top)]
    return ["bwrap", *binds, "--ro-bind", str(_ROOT), str(_ROOT), "--ro-bind", sys.prefix, sys.prefix,
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--bind", str(home), str(home),
            "--proc", "/proc", "--dev", "/dev", "--chdir", str(home), *argv]


@pytest.mark.skipif(shutil.which("fc-list") is None, reason="no fontconfig on this host")
def test_prepared_worker_is_quiet_about_fontconfig_and_the_len_warning(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "LANG": "C.UTF-8",
           "MPLCONFIGDIR": str(tmp_path / ".mpl"), "PYTHONPATH": str(_ROOT), "PYTHONWARNINGS": "always"}
    argv = [sys.executable, "-c", _CHILD]
    if (
        shutil.which("bwrap")
        and subprocess.run(["bwrap", "--ro-bind", "/", "/", "true"], capture_output=True).returncode == 0
    ):
        argv = _without_etc_fonts(argv, tmp_path)
    child = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""
    assert os.path.exists(tmp_path / "pod-agent-fonts.conf")
