"""The hub's storage batcher: calls queued together run in one thread hop, in order, each failing alone."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from pod_agent.errors import HubError
from pod_agent.hub.batching import StorageBatcher


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


async def test_a_posted_call_runs_without_a_waiter_and_its_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batcher = StorageBatcher()
    done = threading.Event()

    def fails() -> None:
        done.set()
        raise HubError("database is locked")

    with caplog.at_level(logging.WARNING, logger="pod_agent.hub.batching"):
        batcher.post(fails)
        await batcher.call(lambda: None)  # runs after it, in the same or the next hop
    assert done.is_set()
    assert "a queued storage call failed: database is locked" in caplog.text
