"""The hub's storage batcher (calls queued together run in one thread hop, in order, each failing alone), its
gathered heartbeat and ack writes, its gathered reads (pending task ids, signers' keys) and gathered nonce
claims (a nonce asked twice in one batch is granted once)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pod_agent.errors import HubError
from pod_agent.hub import open_storage
from pod_agent.hub.batching import GatheredClaims, GatheredReads, GatheredWrites, StorageBatcher
from pod_agent.hub.storage import HubTaskRecord


async def test_queued_calls_run_in_order_in_one_hop_and_a_failure_reaches_only_its_caller() -> None:
    batcher = StorageBatcher()
    ran: list[tuple[int, int]] = []

    def call(i: int) -> int:
        ran.append((i, threading.get_ident()))
        if i == 3:
            raise HubError("no task 3")
        return i * 10

    results = await asyncio.gather(*(batcher.call(call, i) for i in range(6)), return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [0, 10, 20, "no task 3", 40, 50]
    assert [i for i, _ in ran] == list(range(6))
    assert len({thread for _, thread in ran}) == 1 and ran[0][1] != threading.get_ident()


async def test_writes_gathered_meanwhile_go_in_one_call_and_a_failed_one_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    storage, _cluster = open_storage(str(tmp_path / "hub.sqlite"))
    calls: list[tuple[dict[str, int], dict[tuple[str, str], int]]] = []
    first_failed, second_written = asyncio.Event(), asyncio.Event()

    async def run(write: Callable[..., None], touches: dict[str, int], acks: dict[tuple[str, str], int]) -> None:
        calls.append((dict(touches), dict(acks)))
        if len(calls) == 1:
            first_failed.set()
            raise HubError("database is locked")
        write(touches, acks)
        second_written.set()

    writes = GatheredWrites(storage, run)
    try:
        with caplog.at_level(logging.WARNING, logger="pod_agent.hub.batching"):
            writes.touch("pod-a", 100)
            writes.ack("task-1", "pod-a", 101)
            writes.touch("pod-b", 102)
            writes.touch("pod-a", 103)  # the pod's latest beat stands
            await asyncio.wait_for(first_failed.wait(), 5)
            writes.touch("pod-c", 104)
            await asyncio.wait_for(second_written.wait(), 5)
    finally:
        storage.close()
    assert calls == [({"pod-a": 103, "pod-b": 102}, {("task-1", "pod-a"): 101}), ({"pod-c": 104}, {})]
    assert "cannot record 2 heartbeats and 1 acknowledgements: database is locked" in caplog.text


async def test_reads_asked_meanwhile_go_in_one_query_each_pod_gets_its_own_and_a_failure_reaches_all(
    tmp_path: Path,
) -> None:
    storage, _cluster = open_storage(str(tmp_path / "hub.sqlite"))
    for task_id, pods in [("t1", ("a", "b")), ("t2", ("a",))]:
        storage.add_task(HubTaskRecord(task_id=task_id, modeller_id="m", envelope=b"{}", pods=pods, created_at=1))
    asked: list[list[str]] = []
    first_running, release = asyncio.Event(), asyncio.Event()

    async def run(read: Callable[[list[str]], dict[str, list[str]]], pods: list[str]) -> dict[str, list[str]]:
        asked.append(pods)
        if len(asked) == 1:
            first_running.set()
            await release.wait()
        if "broken" in pods:
            raise HubError("database is gone")
        return read(pods)

    reads = GatheredReads(storage.pending_task_ids, run, absent=list, name="pending")
    try:
        first = asyncio.ensure_future(reads.get("a"))
        await asyncio.wait_for(first_running.wait(), 5)
        queued = [asyncio.ensure_future(reads.get(p)) for p in ("b", "c", "a", "gone")]
        await asyncio.sleep(0)
        queued[3].cancel()  # its pod disconnected: the read goes on for the others
        release.set()
        assert await first == ["t1", "t2"]
        assert await asyncio.gather(*queued[:3]) == [["t1"], [], ["t1", "t2"]]
        assert asked == [["a"], ["b", "c", "a", "gone"]]
        failed = await asyncio.gather(reads.get("a"), reads.get("broken"), return_exceptions=True)
        assert [str(f) for f in failed] == ["database is gone"] * 2
    finally:
        storage.close()


async def test_a_claim_asked_twice_in_one_batch_is_granted_to_the_first_caller_only() -> None:
    recorded: set[str] = {"spent"}  # claimed before, as by another hub process
    batches: list[list[str]] = []

    def claim(claims: list[str]) -> set[str]:
        batches.append(claims)
        fresh = set(claims) - recorded
        recorded.update(fresh)
        return fresh

    async def run(fn: Callable[[list[str]], object], claims: list[str]) -> object:
        await asyncio.sleep(0)  # the callers below all queue before the first claim runs
        return fn(claims)

    claims = GatheredClaims(claim, run, name="nonces")
    asked = ["n1", "n2", "n1", "spent", "n1", "n3"]
    cancelled = asyncio.ensure_future(claims.get("n3"))
    granted = [asyncio.ensure_future(claims.get(n)) for n in asked]
    await asyncio.sleep(0)
    cancelled.cancel()  # its grant goes to nobody: the later "n3" asked meanwhile is still refused
    assert await asyncio.gather(*granted) == [True, True, False, False, False, False]
    assert batches == [["n3", "n1", "n2", "spent"]]
    assert await claims.get("n1") is False  # and in a later batch
