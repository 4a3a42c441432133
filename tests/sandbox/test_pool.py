"""The warm pool: a task takes a parked worker, the next one starts at once, and nothing of one task
reaches the next (module state, files, processes); shutdown leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from sbx_helpers import ENTRY, ENTRY_PATH, corpus_runner, is_live, leftover_processes, run_corpus

from pod_agent.errors import SandboxError
from pod_agent.sandbox import SandboxRunner
from pod_agent.sandbox.cgroup import descendants


def _runner(scratch: Path, level: str = "strict", **limits: Any) -> SandboxRunner:
    return corpus_runner(scratch, level, fork_server=False, **{"warm_pool": 2, **limits})


@pytest.mark.parametrize("level", ["strict", "standard"])
async def test_a_second_task_sees_nothing_of_the_first(tmp_path: Path, scratch: Path, level: str) -> None:
    comm = "sbx" + uuid.uuid4().hex[:12]
    async with _runner(scratch, level) as runner:
        await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
        first = await run_corpus(runner, tmp_path, "leave_traces", comm)
        assert leftover_processes(comm) == []
        second = await run_corpus(runner, tmp_path, "look_for_traces", comm)
    assert first.header["token"] != second.header["token"]
    assert second.header["found"] == dict.fromkeys(second.header["found"], False)


async def test_a_taken_worker_is_replaced_before_its_task_ends(tmp_path: Path, scratch: Path) -> None:
    async with _runner(scratch, warm_pool=1) as runner:
        await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
        first = asyncio.ensure_future(run_corpus(runner, tmp_path, "sleep_forever", "sbx" + uuid.uuid4().hex[:12]))
        await asyncio.sleep(0.5)  # the first task has taken the parked worker (its first await)
        # The replacement is parked while the first task still runs.
        assert await runner.wait_warm(ENTRY, entry_path=ENTRY_PATH)
        assert not first.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


def _tree_pids(scratch: Path) -> set[int]:
    """Every process of the runners under ``scratch``: bwrap names the slot dirs in its argv."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if str(scratch).encode() in argv:
                found.update(descendants(int(entry.name)))
    return found


async def test_shutdown_kills_the_running_task_and_every_parked_worker(tmp_path: Path, scratch: Path) -> None:
    comm = "sbx" + uuid.uuid4().hex[:12]
    runner = _runner(scratch)
    await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
    running = asyncio.ensure_future(run_corpus(runner, tmp_path, "setsid_daemon", comm, wall_timeout_s=60))
    await asyncio.sleep(1.0)
    pids = _tree_pids(scratch)
    # The task's tree, two parked workers (one replaced at take), each a bwrap monitor, init and python.
    assert len(pids) >= 6 and leftover_processes(comm)
    # What the agent's shutdown does: cancel the pipeline's task, then close the runner.
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await runner.aclose()
    assert [pid for pid in pids if is_live(pid)] == [] and leftover_processes(comm) == []
    assert not list(scratch.iterdir())
    with pytest.raises(SandboxError, match="shut down"):
        await run_corpus(runner, tmp_path, "look_for_traces", comm)
