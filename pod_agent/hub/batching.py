"""The small storage calls of many pod connections (heartbeat touches, acks, pending reads), run in batches.

Owns ``StorageBatcher``: a call waits for the batch in flight to finish, then runs with every call that
queued meanwhile in one worker-thread hop. Storage calls are
synchronous and short; one thread hop each costs more than the call itself once thousands of pods ack
a fan-out and heartbeat at once, and the default executor's queue then delays every other request the
hub serves. Each call still runs on its own (its result or exception goes to its caller only); the
order of calls is kept.

And ``GatheredWrites``: the heartbeats' touches and the acknowledgements that pods send on their task
sockets, gathered while the previous write runs and written together (``Storage.touch_pods``,
``Storage.ack_deliveries``: one transaction, or one statement, instead of a commit each), so that a
pod's next message is read without waiting for the database. And ``GatheredReads``: the push loops' reads
of their pods' pending task ids, those asked for while the previous read runs made in one query
(``Storage.pending_task_ids``): every connected pod's loop reads once per quiet MAX_LONG_POLL_S, 10,000 pods
some 300 reads a second, and on PostgreSQL each had been a thread hop and a round trip of its own (a
quarter of the hub's time in a fan-out). What a call does is ``storage.Storage``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pod_agent.hub.storage import Storage

_log = logging.getLogger(__name__)

# Calls one hop runs at most, so that one batch does not hold the storage lock for long.
MAX_BATCH_CALLS = 512


@dataclass(frozen=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]


def _run_all(calls: list[_Call]) -> list[tuple[bool, Any]]:
    out: list[tuple[bool, Any]] = []
    for call in calls:
        try:
            out.append((True, call.fn(*call.args, **call.kwargs)))
        except Exception as exc:  # noqa: BLE001 - handed back to that call's own caller, which handles it
            out.append((False, exc))
    return out


class StorageBatcher:
    """``await batcher.call(storage.touch_pod, name, now=now)``: as ``asyncio.to_thread``, in batches."""

    def __init__(self) -> None:
        self._queued: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append(_Call(fn, args, kwargs, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="hub-storage-batch")
        return await future

    async def _flush(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued[:MAX_BATCH_CALLS], self._queued[MAX_BATCH_CALLS:]
                try:
                    results = await asyncio.to_thread(_run_all, batch)
                except BaseException as exc:  # cancelled at shutdown: no caller waits forever
                    for call in [*batch, *self._queued]:
                        if not call.future.done():
                            call.future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                    self._queued = []
                    raise
                for call, (ok, value) in zip(batch, results, strict=True):
                    if call.future.done():  # its caller was cancelled meanwhile
                        continue
                    if ok:
                        call.future.set_result(value)
                    else:
                        call.future.set_exception(value)
        finally:
            self._flusher = None


class GatheredWrites:
    """``touch(pod, now)`` and ``ack(task_id, pod, now)`` queue; one writer task writes what queued while the
    last write ran, through ``run`` (``server._Hub.db_batched``), until nothing is left.

    A failed write is logged and dropped: an acknowledgement not recorded leaves its task pending (delivered
    again when the pod reconnects, and acknowledged again), and a pod's next heartbeat brings its touch.
    What queues is bounded by the callers: a touch per pod, an ack per task pushed on a connection."""

    def __init__(self, storage: Storage, run: Callable[..., Awaitable[Any]]) -> None:
        self._storage = storage
        self._run = run
        self._touches: dict[str, int] = {}
        self._acks: dict[tuple[str, str], int] = {}
        self._writer: asyncio.Task[None] | None = None

    def touch(self, pod: str, now: int) -> None:
        self._touches[pod] = now
        self._start()

    def ack(self, task_id: str, pod: str, now: int) -> None:
        self._acks.setdefault((task_id, pod), now)
        self._start()

    def _start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="hub-gathered-writes")

    async def _write(self) -> None:
        try:
            while self._touches or self._acks:
                touches, self._touches = self._touches, {}
                acks, self._acks = self._acks, {}
                try:
                    await self._run(self._write_now, touches, acks)
                except Exception as exc:  # noqa: BLE001 - any backend's error: logged, the data comes again
                    _log.warning(
                        "cannot record %d heartbeats and %d acknowledgements: %s", len(touches), len(acks), exc
                    )
        finally:
            self._writer = None

    def _write_now(self, touches: dict[str, int], acks: dict[tuple[str, str], int]) -> None:
        if touches:
            self._storage.touch_pods(touches)
        if acks:
            # Gathered within one write's time of each other: the earliest stands for all.
            self._storage.ack_deliveries(list(acks), now=min(acks.values()))


class GatheredReads:
    """``await reads.pending(pod)``: the ids of the tasks pending for ``pod``, read together with those of every
    pod that asked while the previous read ran, through ``run`` (``server._Hub.db_batched``). A failed read
    raises to each of its callers; a caller cancelled meanwhile is skipped."""

    def __init__(self, storage: Storage, run: Callable[..., Awaitable[Any]]) -> None:
        self._storage = storage
        self._run = run
        self._queued: dict[str, list[asyncio.Future[list[str]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def pending(self, pod: str) -> list[str]:
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(pod, []).append(future)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="hub-gathered-reads")
        return await future

    async def _read(self) -> None:
        try:
            while self._queued:
                queued, self._queued = self._queued, {}
                waiting = [(pod, future) for pod, futures in queued.items() for future in futures]
                try:
                    found: dict[str, list[str]] = await self._run(self._storage.pending_task_ids, list(queued))
                except Exception as exc:  # noqa: BLE001 - any backend's error, handed to each caller
                    for _, future in waiting:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # cancelled at shutdown: no caller waits forever
                    for _, future in waiting:
                        future.cancel()
                    raise
                for pod, future in waiting:
                    if not future.done():
                        future.set_result(list(found.get(pod, ())))
        finally:
            self._reader = None
