"""``pod-agent demo`` started inside a directory holding another pod_agent: its pods import the
demo's own tree (the one their sandboxed workers import), never the one in the directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pod_agent.demo.federation import pod_argv

DECOY = 'raise SystemExit("decoy pod_agent imported")\n'


@pytest.fixture
def decoy_dir(tmp_path: Path) -> Path:
    (tmp_path / "pod_agent").mkdir()
    (tmp_path / "pod_agent" / "__init__.py").write_text(DECOY)
    return tmp_path


def _run(argv: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POD_AGENT_")} | extra_env
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_demo_pod_started_beside_a_decoy_tree_imports_the_demos_own(decoy_dir: Path) -> None:
    config = decoy_dir / "absent.toml"
    # The command the demo used before: cwd first on sys.path, so the decoy wins.
    assert "decoy pod_agent imported" in _run([sys.executable, "-m", "pod_agent", "run", "--config", str(config)],
                                              decoy_dir).stderr
    # Neither the directory nor a PYTHONPATH naming it reaches the pod's sys.path.
    for done in (_run(pod_argv(config), decoy_dir), _run(pod_argv(config), decoy_dir, PYTHONPATH=str(decoy_dir))):
        assert "decoy" not in done.stdout + done.stderr
        # The real agent got as far as reading its (absent) config: a config error, exit 2.
        assert done.returncode == 2 and done.stderr.startswith("pod-agent: error:") and "absent.toml" in done.stderr
