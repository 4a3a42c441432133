"""Levels other than strict-with-namespaces: standard, none, the Landlock fallback, and the warm worker."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from sbx_helpers import (
    ATTACK_LIMITS,
    ENTRY,
    ENTRY_PATH,
    SANDBOX_USER,
    SECRET,
    Outside,
    RunModel,
    leftover_processes,
    nothing_arrived,
)

from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
from pod_agent.errors import SandboxError, SandboxUnavailable
from pod_agent.sandbox import SandboxJob, SandboxRunner


async def test_standard_blocks_tcp_with_the_seccomp_network_deny(run_model: RunModel, outside: Outside) -> None:
    outcome = await run_model("tcp_connect", level="standard")
    assert outcome.header["blocked"] == "PermissionError"
    nothing_arrived(outside)


async def test_none_runs_unconfined_and_warns_on_every_task(run_model: RunModel,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pod_agent.sandbox"):
        first = await run_model("env_dump", level="none")
        second = await run_model("env_dump", level="none")
    assert first.header["environ"]["USER"] == second.header["environ"]["USER"]
    warnings = [r for r in caplog.records if "UNCONFINED" in r.getMessage()]
    assert len(warnings) == 2


async def test_strict_without_namespaces_falls_back_to_seccomp_and_landlock(run_model: RunModel,
                                                                          outside: Outside) -> None:
    no_ns = frozenset({"namespaces"})
    files = await run_model("read_files", unsafe_disable_layers=no_ns)
    assert all(v.startswith("blocked:") for v in files.header["read"].values())
    assert SECRET not in repr(files.header)
    sockets = await run_model("unix_socket", unsafe_disable_layers=no_ns)
    # Landlock scopes abstract sockets; the path socket is reachable by path, so refusal is up to
    # file permissions (here 0777 to prove the point: only the mount namespace hides it).
    assert sockets.header["blocked"]["abstract"] is not None
    tcp = await run_model("tcp_connect", unsafe_disable_layers=no_ns)
    assert tcp.header["blocked"] == "PermissionError"
    written = await run_model("write_input", unsafe_disable_layers=no_ns)
    assert written.header["blocked"] == {"inside": "PermissionError", "host": "PermissionError"}
    nothing_arrived(outside, path_socket=False)
    connected, _address = outside.unix.accept()
    connected.close()


async def test_without_namespaces_or_cgroup_a_setsid_daemon_still_dies(run_model: RunModel, outside: Outside) -> None:
    # Only the process group is left to kill, so seccomp denies leaving it.
    with pytest.raises(SandboxError) as caught:
        await run_model("setsid_daemon", wall_timeout_s=1.5, unsafe_disable_layers=frozenset({"namespaces", "cgroup"}))
    assert caught.value.code in {"wall_timeout", "task_failed"}
    assert leftover_processes(outside.comm) == []


async def test_benign_lightning_model_trains_under_the_landlock_fallback(run_model: RunModel) -> None:
    # The fallback Docker's default seccomp profile leaves (no namespaces): torch, Lightning and
    # DataLoader worker processes must still work inside Landlock's read-only view.
    outcome = await run_model("benign_torch", unsafe_disable_layers=frozenset({"namespaces"}), memory_mb=4096,
                              max_processes=64, cpu_time_s=300, wall_timeout_s=180, max_open_files=1024, max_file_mb=64)
    assert outcome.header["steps"] == 6
    assert outcome.header["notes"] == "trained\n"


def test_strict_refuses_when_isolation_layers_are_missing() -> None:
    with pytest.raises(SandboxUnavailable, match="level 'strict' needs namespaces"):
        SandboxRunner(SecuritySection(sandbox="strict", sandbox_user=SANDBOX_USER), SandboxLimitsSection(),
                      unsafe_disable_layers=frozenset({"namespaces", "landlock"}))


def test_standard_refuses_without_seccomp() -> None:
    with pytest.raises(SandboxUnavailable, match="level 'standard' needs seccomp"):
        SandboxRunner(SecuritySection(sandbox="standard", sandbox_user=SANDBOX_USER), SandboxLimitsSection(),
                      unsafe_disable_layers=frozenset({"seccomp"}))


def test_strict_refuses_a_missing_sandbox_user() -> None:
    with pytest.raises(SandboxUnavailable, match="level 'strict' needs uid"):
        SandboxRunner(SecuritySection(sandbox="strict", sandbox_user="pod-no-such-user"), SandboxLimitsSection())


def _case(tmp_path: Path, name: str, source: str) -> tuple[Path, Path]:
    (tmp_path / name / "input").mkdir(parents=True)
    (tmp_path / name / "input" / "model.py").write_text(source)
    return tmp_path / name / "input", tmp_path / name / "work"


_WHO_AM_I = """
import os
def run(channel):
    import sbx_test_entry
    return {"token": sbx_test_entry.TOKEN, "prepared_at": sbx_test_entry.PREPARED_AT,
            "request": channel.request()}, {}
"""


async def test_warm_worker_is_prepared_before_the_task_and_used_once(tmp_path: Path) -> None:
    # The warm pool's worker (fork-server children share their zygote's token: test_forkserver).
    limits = SandboxLimitsSection(**{**ATTACK_LIMITS, "warm_worker": True})
    async with SandboxRunner(SecuritySection(sandbox="strict", sandbox_user=SANDBOX_USER), limits,
                             fork_server=False) as runner:
        await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
        tokens = []
        for index in range(2):
            assert await runner.wait_warm(ENTRY, entry_path=ENTRY_PATH)
            input_dir, work_dir = _case(tmp_path, f"task{index}", _WHO_AM_I)
            sent_at = time.time()
            outcome = await runner.run(SandboxJob(entry=ENTRY, input_dir=input_dir, work_dir=work_dir,
                                                  request={"n": index}, entry_path=ENTRY_PATH))
            assert outcome.header["request"] == {"n": index}
            assert outcome.header["prepared_at"] < sent_at
            tokens.append(outcome.header["token"])
        assert tokens[0] != tokens[1]


async def test_warm_worker_task_failure_still_replaces_the_worker(tmp_path: Path) -> None:
    limits = SandboxLimitsSection(**{**ATTACK_LIMITS, "warm_worker": True})
    async with SandboxRunner(SecuritySection(sandbox="strict", sandbox_user=SANDBOX_USER), limits) as runner:
        await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
        input_dir, work_dir = _case(tmp_path, "bad", "import pod_agent_no_such_module\n")
        with pytest.raises(SandboxError, match="import_error"):
            await runner.run(SandboxJob(entry=ENTRY, input_dir=input_dir, work_dir=work_dir, request={},
                                        entry_path=ENTRY_PATH))
        assert await runner.wait_warm(ENTRY, entry_path=ENTRY_PATH)


async def test_missing_input_dir_fails_before_any_worker_starts(tmp_path: Path) -> None:
    limits = SandboxLimitsSection(**ATTACK_LIMITS)
    async with SandboxRunner(SecuritySection(sandbox="strict", sandbox_user=SANDBOX_USER), limits) as runner:
        with pytest.raises(SandboxError, match=r"\(input_unreadable\): staging .*/absent"):
            await runner.run(SandboxJob(entry=ENTRY, input_dir=tmp_path / "absent", work_dir=tmp_path / "work",
                                        request={}, entry_path=ENTRY_PATH))


async def test_the_landlock_fallback_shows_the_worker_only_its_own_proc_entries(run_model: RunModel) -> None:
    outcome = await run_model("proc_snoop", unsafe_disable_layers=frozenset({"namespaces"}))
    assert outcome.header["hostile"] == dict.fromkeys(outcome.header["hostile"], "blocked:PermissionError")
    assert outcome.header["own"] == dict.fromkeys(outcome.header["own"], "read")
