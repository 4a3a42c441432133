"""Runner pieces without a worker: exit-status reasons, limits resolution, process-tree discovery."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pod_agent.config.settings import SandboxLimitsSection
from pod_agent.sandbox.bootstrap import failure_code
from pod_agent.errors import SandboxError
from pod_agent.sandbox.cgroup import _delegate_v2, descendants
from pod_agent.sandbox.runner import EffectiveLimits, SandboxLimits, _exit_reason


@pytest.mark.parametrize(
    ("returncode", "namespaced", "oom", "reason"),
    [
        (128 + signal.SIGXCPU, True, False, "cpu_time_exceeded"),
        (-signal.SIGXCPU, False, False, "cpu_time_exceeded"),
        (128 + signal.SIGKILL, True, True, "memory_exceeded"),
        (-signal.SIGKILL, False, False, "killed"),
        (0, True, False, "no_result"),
        (128 + signal.SIGXCPU, False, False, "no_result"),
    ],
)
def test_exit_status_names_the_reason(returncode: int, namespaced: bool, oom: bool, reason: str) -> None:
    assert _exit_reason(returncode, namespaced=namespaced, oom=oom) == reason


def test_a_task_can_ask_for_less_but_never_more() -> None:
    pod = SandboxLimitsSection(wall_timeout_s=100, memory_mb=1024)
    limits = EffectiveLimits.resolve(pod, SandboxLimits(wall_timeout_s=10, memory_mb=99_999))
    assert (limits.wall_timeout_s, limits.memory_mb, limits.cpu_time_s) == (10, 1024, pod.cpu_time_s)


@pytest.mark.parametrize(
    ("exc", "code"),
    [(MemoryError(), "memory_exceeded"), (ModuleNotFoundError("x"), "import_error"),
     (SyntaxError("x"), "syntax_error"), (OSError(27, "File too large"), "file_size_exceeded"),
     (ValueError("secret data 42"), "uncaught_exception")],
)
def test_escaped_exceptions_become_fixed_codes(exc: BaseException, code: str) -> None:
    assert failure_code(exc) == code


def test_descendants_finds_grandchildren() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        for _ in range(100):
            found = descendants(proc.pid)
            if len(found) >= 3:
                break
            time.sleep(0.02)
        assert found[0] == proc.pid and len(found) == 3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_cgroup_v2_delegation_moves_the_agent_to_a_leaf_first(tmp_path: Path) -> None:
    # A plain directory stands in for the agent's v2 group (this host is v1/hybrid).
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    _delegate_v2(tmp_path)
    assert (tmp_path / "pod-agent" / "cgroup.procs").read_text() == str(os.getpid())
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_cgroup_v2_without_memory_controller_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(SandboxError, match="cgroup_unavailable: .* has no memory/pids controllers"):
        _delegate_v2(tmp_path)
