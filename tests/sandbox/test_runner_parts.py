"""Runner pieces without a worker: exit-status reasons, limits resolution, process-tree discovery, cgroup counts,
and a worker's start cancelled while its process is spawned."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sbx_helpers import is_live

from pod_agent.config.settings import SandboxLimitsSection
from pod_agent.errors import SandboxError
from pod_agent.policy.codes import failure_code_for
from pod_agent.sandbox import process
from pod_agent.sandbox.bootstrap import failure_code
from pod_agent.sandbox.cgroup import CgroupSupport, MemoryEvents, TaskCgroup, _delegate_v2, descendants
from pod_agent.sandbox.launch import Identity
from pod_agent.sandbox.limits import EffectiveLimits, SandboxLimits
from pod_agent.sandbox.process import LaunchSpec, WorkerProcess, exit_reason

_QUIET = MemoryEvents(oom_kills=0, cap_hits=0)
_OOM = MemoryEvents(oom_kills=1, cap_hits=3)
_AT_CAP = MemoryEvents(oom_kills=0, cap_hits=3)
_AT_CAP_UNCOUNTED = MemoryEvents(oom_kills=None, cap_hits=3)


@pytest.mark.parametrize(
    ("returncode", "namespaced", "memory", "reason", "code"),
    [
        (128 + signal.SIGXCPU, True, _QUIET, "cpu_time_exceeded", "time_exceeded"),
        (-signal.SIGXCPU, False, None, "cpu_time_exceeded", "time_exceeded"),
        (-signal.SIGXFSZ, False, _QUIET, "file_size_exceeded", "output_too_large"),
        (128 + signal.SIGKILL, True, _OOM, "memory_exceeded", "memory_exceeded"),
        (0, True, _OOM, "memory_exceeded", "memory_exceeded"),
        # A kernel that does not count OOM kills (v1 before 4.13): a SIGKILL at the cap is the OOM killer.
        (-signal.SIGKILL, False, _AT_CAP_UNCOUNTED, "memory_exceeded", "memory_exceeded"),
        (128 + signal.SIGKILL, True, _AT_CAP_UNCOUNTED, "memory_exceeded", "memory_exceeded"),
        # One that does and counted none: someone else's SIGKILL, even after reclaim at the cap.
        (-signal.SIGKILL, False, _AT_CAP, "killed", "sandbox_error"),
        (-signal.SIGKILL, False, _QUIET, "killed", "sandbox_error"),
        (-signal.SIGKILL, False, None, "killed", "sandbox_error"),
        (-signal.SIGSEGV, False, _AT_CAP_UNCOUNTED, "no_result", "sandbox_error"),
        (0, True, _AT_CAP_UNCOUNTED, "no_result", "sandbox_error"),
        (128 + signal.SIGXCPU, False, _QUIET, "no_result", "sandbox_error"),
    ],
)
def test_exit_status_and_memory_counts_name_the_reason(
    returncode: int, namespaced: bool, memory: MemoryEvents | None, reason: str, code: str
) -> None:
    assert exit_reason(returncode, namespaced=namespaced, memory=memory) == reason
    assert failure_code_for(SandboxError(reason)) == code


def _fake_group(tmp_path: Path, version: int, files: dict[str, str]) -> TaskCgroup:
    """A TaskCgroup over a plain directory holding the given controller files."""
    group = tmp_path / "pod-agent-sandbox-test"
    group.mkdir()
    for name, text in files.items():
        (group / name).write_text(text)
    return TaskCgroup(CgroupSupport(version, {"memory": tmp_path, "pids": tmp_path}), [group])


@pytest.mark.parametrize(
    ("version", "files", "events"),
    [
        (2, {"memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"}, MemoryEvents(1, 12)),
        (2, {"memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"}, _QUIET),
        (
            1,
            {
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                "memory.failcnt": "7\n",
                "memory.memsw.failcnt": "12\n",
            },
            MemoryEvents(1, 12),
        ),
        (
            1,
            {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n", "memory.failcnt": "12\n"},
            MemoryEvents(None, 12),
        ),
        (1, {}, MemoryEvents(None, 0)),
    ],
    ids=["v2-oom", "v2-quiet", "v1-oom", "v1-old-kernel", "v1-no-files"],
)
def test_memory_events_read_oom_kills_and_cap_hits(
    tmp_path: Path, version: int, files: dict[str, str], events: MemoryEvents
) -> None:
    assert _fake_group(tmp_path, version, files).memory_events() == events


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
    with pytest.raises(SandboxError, match=r"\(cgroup_unavailable\): .* has no memory/pids controllers"):
        _delegate_v2(tmp_path)


@pytest.mark.parametrize("below_is", ["in-its-group", "in-a-session-of-its-own"])
async def test_a_start_cancelled_while_its_process_is_spawned_ends_and_takes_the_whole_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below_is: str
) -> None:
    """A pool's start cancelled at shutdown just as its process was spawned: asyncio's own clean-up killed the
    spawned process alone and then waited for every pipe to close, which a process below it still held (bwrap's
    init, before it arms its parent-death signal), so the pool's shutdown never ended. Here the process below is
    a shell's background child holding the pipes, in the shell's process group or, as bwrap's init, in a session
    of its own (which the worker's group kill misses)."""
    below = tmp_path / "below.pid"
    # The process below says its pid once it is where it will be killed from (its own session, if so).
    setsid = "setsid " if below_is == "in-a-session-of-its-own" else ""
    says = f"echo $$ > {below}.part && mv {below}.part {below} && exec sleep 120"
    monkeypatch.setattr(process, "bootstrap_argv", lambda: [
        "/bin/sh", "-c", f"{setsid}/bin/sh -c '{says}' & exec sleep 120",
    ])
    me = Identity("agent", os.getuid(), os.getgid(), dedicated=False)
    spec = LaunchSpec(entry="entry", entry_path=None, layers=frozenset(), bwrap="", identity=me, switch_to=None,
                      gpu=False, cgroup_support=None, ro_paths=(), nproc_slack=None)
    limits = EffectiveLimits(wall_timeout_s=60, cpu_time_s=60, memory_mb=256, max_processes=64, max_open_files=256,
                             max_file_mb=16, max_output_mb=16)
    (tmp_path / "slot" / "input").mkdir(parents=True)
    worker = WorkerProcess(spec, slot=tmp_path / "slot", limits=limits, warm=True)
    before = set(descendants(os.getpid()))
    starting = asyncio.create_task(worker.start())
    # The loop turned one step at a time until the process is spawned (its pipes not yet connected), then held
    # (nothing of the spawn's goes on) until the process below it exists, and the start cancelled there.
    deadline = time.monotonic() + 10
    while set(descendants(os.getpid())) == before and time.monotonic() < deadline:
        await asyncio.sleep(0)
    while not below.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = int(below.read_text())
    try:
        starting.cancel()
        done, _ = await asyncio.wait({starting}, timeout=10)
        assert done, "the cancelled start waited on pipes that a process below the spawned one holds"
        assert starting.cancelled()
        await asyncio.wait_for(worker.discard(), 30)  # a survivor costs it two reaping waits (process.py)
        assert not is_live(pid), "a process below the worker outlived its destroy()"
    finally:
        if is_live(pid):
            os.kill(pid, signal.SIGKILL)  # a failed run's process below: it releases the start's pipes
