"""The agent (and the demo) refuse to start when the pod_agent tree the agent would bind into the
sandbox is not the one its workers import (``python -m pod_agent`` run inside a directory holding
another checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pod_agent
from pod_agent.sandbox import check_worker_package

INSTALLED = Path(pod_agent.__file__).resolve().parent


@pytest.fixture
def other_checkout(tmp_path: Path) -> Path:
    """A directory holding a second, working copy of pod_agent (as another checkout would)."""
    root = tmp_path / "other-checkout"
    shutil.copytree(INSTALLED, root / "pod_agent", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pod.toml").write_text(f'[pod]\nname = "p"\n[datasource]\npath = "{tmp_path / "data.csv"}"\n')
    return root


def _pod_agent(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("POD_AGENT_")}
    return subprocess.run([sys.executable, "-m", "pod_agent", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_tree_this_agent_runs_from_is_the_one_its_workers_import() -> None:
    assert check_worker_package() == INSTALLED


def test_run_inside_another_checkout_refuses_to_start_naming_both_trees(other_checkout: Path) -> None:
    done = _pod_agent(other_checkout, "run", "--config", str(other_checkout / "pod.toml"))
    assert done.returncode == 1
    assert (f"pod-agent: error: sandbox (package_mismatch): this agent runs pod_agent from "
            f"{other_checkout.resolve() / 'pod_agent'}, but a sandboxed worker ({sys.executable} -I) imports "
            f"{INSTALLED}: start pod-agent from a directory that holds no other pod_agent tree") in done.stderr


def test_check_inside_another_checkout_fails_the_sandbox_line(other_checkout: Path) -> None:
    done = _pod_agent(other_checkout, "check", "--config", str(other_checkout / "pod.toml"))
    assert done.returncode == 1
    sandbox = [line for line in done.stdout.splitlines() if line.split()[1:2] == ["sandbox"]]
    assert sandbox and sandbox[0].startswith("FAIL  sandbox")
    assert "(package_mismatch): this agent runs pod_agent from" in sandbox[0]


def test_a_demo_running_from_another_tree_stops_before_starting_anything(other_checkout: Path) -> None:
    out = other_checkout / "out"
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from pod_agent.demo.federation import LocalFederation
        from pod_agent.errors import SandboxError
        from pod_agent.protocol import IdentityKey

        async def main() -> None:
            async with LocalFederation(Path({str(out)!r}), [], modeller=IdentityKey.generate(), sandbox="none"):
                print("started")

        try:
            asyncio.run(main())
        except SandboxError as exc:
            print("refused:", exc)
        """
    )
    # `python -c` puts the cwd first on sys.path, as `python -m pod_agent demo` would.
    done = subprocess.run([sys.executable, "-c", script], cwd=other_checkout, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.startswith("refused: sandbox (package_mismatch): this agent runs pod_agent from "
                                  f"{other_checkout.resolve() / 'pod_agent'}"), done.stderr[-2000:]
    assert not (out / "hub.sqlite").exists()
