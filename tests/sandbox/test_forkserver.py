"""The fork server: each task a fresh child of one confined zygote that imported the entry once; nothing
of one task reaches the next (module state, memory, files, /dev/shm, processes), a child can reach
neither the zygote nor any other process, and a zygote that died or may have been touched is replaced.
A task's child is forked ahead, after the previous child's release, and holds nothing of it either.
A child reserved while the agent prepares a task's input, and never given the task (the input failed),
ends with the reservation, and the next one is forked ahead. A child forked ahead rehearses (the entry's
own task) in its own cgroup before its task; one whose rehearsal fails is not parked. The hostile corpus
runs on this path too (conftest.worker_path)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from sbx_helpers import (
    CORPUS,
    ENTRY,
    ENTRY_PATH,
    corpus_runner,
    forked_children,
    is_live,
    leftover_processes,
    one_parked_child,
    run_corpus,
    zygote_pids,
)

from pod_agent.errors import SandboxError, TaskFailed
from pod_agent.sandbox import SandboxJob, SandboxLimits


async def test_a_second_task_sees_nothing_of_the_first(
        tmp_path: Path, scratch: Path, caplog: pytest.LogCaptureFixture) -> None:
    comm = "sbx" + uuid.uuid4().hex[:12]
    async with corpus_runner(scratch, fork_server=True) as runner:
        assert runner.forks
        await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
        with caplog.at_level(logging.INFO, logger="pod_agent.sandbox"):
            first = await run_corpus(runner, tmp_path, "leave_traces", comm)
            assert leftover_processes(comm) == []
            second = await run_corpus(runner, tmp_path, "look_for_traces", comm)
    # Each task took a child forked ahead: the second's was forked once the first's tree was dead and wiped.
    assert [r.getMessage().split()[1] for r in caplog.records if "worker ready in" in r.getMessage()] == [
        "parked", "parked"]
    # One zygote prepared the entry once (same token) and forked both tasks.
    assert first.header["token"] == second.header["token"]
    assert second.header["found"] == dict.fromkeys(second.header["found"], False)
    assert set(second.header["found"]) == {"global", "module", "environ", "work", "home", "tmp", "shm"}


async def test_a_child_can_neither_signal_trace_nor_read_the_zygote_or_any_process(
        tmp_path: Path, scratch: Path) -> None:
    async with corpus_runner(scratch, fork_server=True) as runner:
        outcome = await run_corpus(runner, tmp_path, "touch_zygote", "sbx" + uuid.uuid4().hex[:12])
        # The zygote is still whole: it forks the next task.
        again = await run_corpus(runner, tmp_path, "look_for_traces", "sbx" + uuid.uuid4().hex[:12])
    found = outcome.header["found"]
    assert outcome.header["parent"] > 1  # the zygote, not a reaper
    assert found.pop("signalled") == []
    # Landlock's signal scope (EPERM), its file rules (EACCES), seccomp (EPERM) for the syscalls.
    assert found == {"kill": "blocked:PermissionError", "mem_read": "blocked:PermissionError",
                     "mem_write": "blocked:PermissionError", "environ": "blocked:PermissionError",
                     "maps": "blocked:PermissionError", "ptrace_attach": "blocked:Operation not permitted",
                     "ptrace_seize": "blocked:Operation not permitted", "vm_readv": "blocked:Operation not permitted",
                     "vm_writev": "blocked:Operation not permitted", "shmget": "blocked:Operation not permitted"}
    assert again.header["token"] == outcome.header["token"]


async def test_a_task_beside_a_running_one_gets_a_zygote_of_its_own(tmp_path: Path, scratch: Path) -> None:
    # A zygote serves one child at a time, so no two live tasks ever share its namespaces or tmpfs.
    comm = "sbx" + uuid.uuid4().hex[:12]
    async with corpus_runner(scratch, fork_server=True) as runner:
        running = asyncio.ensure_future(run_corpus(runner, tmp_path, "sleep_forever", comm))
        while not leftover_processes(comm):
            await asyncio.sleep(0.05)
        beside = await run_corpus(runner, tmp_path, "touch_zygote", "sbx" + uuid.uuid4().hex[:12])
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        after = await run_corpus(runner, tmp_path, "look_for_traces", "sbx" + uuid.uuid4().hex[:12])
    assert beside.header["found"]["signalled"] == []
    assert leftover_processes(comm) == []
    assert after.header["found"] == dict.fromkeys(after.header["found"], False)


@pytest.mark.parametrize("settle", [True, False], ids=["after-its-end-is-seen", "before-its-end-is-read"])
async def test_a_dead_zygote_is_replaced_for_the_next_task(tmp_path: Path, scratch: Path, settle: bool) -> None:
    # Not settled: the next task is asked for at once, while the agent may still count the killed zygote
    # alive; that task must still run rather than fail as if its own child had died: on a new zygote, or on
    # the child parked before the kill (forked after the last release, so as clean) while that still lives.
    async with corpus_runner(scratch, fork_server=True) as runner:
        await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
        before = await run_corpus(runner, tmp_path, "look_for_traces", "sbx" + uuid.uuid4().hex[:12])
        (zygote,) = zygote_pids(scratch)
        os.killpg(zygote, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while settle and zygote_pids(scratch) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        after = await run_corpus(runner, tmp_path, "look_for_traces", "sbx" + uuid.uuid4().hex[:12])
        later = await run_corpus(runner, tmp_path, "look_for_traces", "sbx" + uuid.uuid4().hex[:12])
    assert before.header["token"] != later.header["token"]
    for outcome in (after, later):
        assert outcome.header["found"] == dict.fromkeys(outcome.header["found"], False)


async def test_a_reserved_child_whose_task_input_failed_ends_and_the_next_is_forked_ahead(
        tmp_path: Path, scratch: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with corpus_runner(scratch, fork_server=True) as runner:
        await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
        parked = await one_parked_child(scratch)
        # The agent's input preparation fails while the child is reserved: the failure is the block's own.
        with pytest.raises(TaskFailed, match="under the floor"):
            async with runner.reserved(ENTRY, SandboxLimits(), entry_path=ENTRY_PATH):
                await asyncio.sleep(0.2)  # the reservation takes the parked child meanwhile
                raise TaskFailed("too_few_rows", "split 'test' holds 3 rows, under the floor")
        assert not any(is_live(pid) for pid in parked)
        fresh = await one_parked_child(scratch, other_than=frozenset(parked))
        comm = "sbx" + uuid.uuid4().hex[:12]
        with caplog.at_level(logging.INFO, logger="pod_agent.sandbox"):
            async with runner.reserved(ENTRY, SandboxLimits(), entry_path=ENTRY_PATH) as reservation:
                outcome = await run_corpus(runner, tmp_path, "look_for_traces", comm, reservation=reservation)
        assert leftover_processes(comm) == []
    # The task ran on the reserved child, the one forked ahead after the failed reservation's release.
    assert not any(is_live(pid) for pid in fresh)
    assert [r.getMessage().split()[1] for r in caplog.records if "worker ready in" in r.getMessage()] == ["parked"]
    assert outcome.header["found"] == dict.fromkeys(outcome.header["found"], False)


async def test_a_worker_reserved_under_other_limits_does_not_run_the_job(tmp_path: Path, scratch: Path) -> None:
    runner = corpus_runner(scratch, fork_server=False)
    # Reserved under a lower memory cap (128 MB) than the job's (the pod's 256 MB): the job must not run on it.
    async with runner, runner.reserved(ENTRY, SandboxLimits(memory_mb=128), entry_path=ENTRY_PATH) as reservation:
        with pytest.raises(SandboxError, match="reserved under other limits"):
            await run_corpus(runner, tmp_path, "look_for_traces", "sbx" + uuid.uuid4().hex[:12],
                             reservation=reservation)


async def test_a_child_forked_ahead_rehearses_in_its_own_cgroup_before_its_task(
        tmp_path: Path, scratch: Path) -> None:
    async with corpus_runner(scratch, fork_server=True) as runner:
        # Warm once the fork server is up and its child forked ahead has rehearsed.
        assert await runner.wait_warm(ENTRY, entry_path=ENTRY_PATH)
        assert forked_children(scratch)
        outcome = await run_corpus(runner, tmp_path, "rehearsal_seen", "sbx" + uuid.uuid4().hex[:12])
    assert outcome.header["rehearsed_in"] is not None
    # Placed in its cgroup before it was asked to rehearse: the pages it copied count against the task's caps.
    assert outcome.header["rehearsed_in"] == outcome.header["cgroup"]


async def test_a_child_whose_rehearsal_fails_is_not_parked_and_the_task_forks_its_own(
        tmp_path: Path, scratch: Path, caplog: pytest.LogCaptureFixture) -> None:
    entry = "sbx_failing_rehearsal"
    case = tmp_path / "case"
    (case / "input").mkdir(parents=True)
    (case / "input" / "model.py").write_text((CORPUS / "rehearsal_seen.py").read_text())
    with caplog.at_level(logging.INFO, logger="pod_agent.sandbox"):
        async with corpus_runner(scratch, fork_server=True) as runner:
            await runner.prewarm(entry, entry_path=ENTRY_PATH)
            outcome = await runner.run(SandboxJob(entry=entry, input_dir=case / "input", work_dir=case / "work",
                                                  request={}, entry_path=ENTRY_PATH))
    assert any("could not be forked ahead (sandbox (task_failed): uncaught_exception)" in r.getMessage()
               for r in caplog.records)
    assert [r.getMessage().split()[1] for r in caplog.records if "worker ready in" in r.getMessage()] == ["fork"]
    assert outcome.header["rehearsed_in"] is None
