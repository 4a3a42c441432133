"""The small storage calls of many pod connections (heartbeat touches, acks, signers' keys, nonces, pending reads),
run in batches.

Each class here drains a queue with one background task (``_Drainer``): what queued while its previous drain ran
goes in the next one, until nothing is left. Storage calls are synchronous and short; one thread hop (and on
PostgreSQL one round trip) each costs more than the call itself once thousands of pods ack a fan-out, heartbeat,
or reconnect to a surviving hub process at once, and the default executor's queue then delays every other
request the hub serves.

- ``StorageBatcher``: any calls, each run on its own (its result or exception to its caller only), in order, in
  one worker-thread hop.
- ``GatheredWrites``: the heartbeats' touches and the acknowledgements that pods send on their task sockets,
  written together (``Storage.touch_pods``, ``Storage.ack_deliveries``: one transaction, or one statement,
  instead of a commit each), so that a pod's next message is read without waiting for the database.
- ``GatheredReads``: keyed reads made in one query for every key asked meanwhile: the push loops' pending task
  ids (``Storage.pending_task_ids``: every connected pod's loop reads once per quiet MAX_LONG_POLL_S, 10,000
  pods some 300 reads a second) and signed requests' signers (``Storage.key_standings``: 2,000 pods moving to a
  surviving process open 2,000 signed sockets within a second).
- ``GatheredClaims``: request nonces claimed across hub processes in one statement
  (``PostgresStorage.claim_nonces``); of two claims of one nonce only the first is granted.

What a call does is ``storage.Storage``'s.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pod_agent.hub.storage import Storage

_log = logging.getLogger(__name__)

# Calls one hop runs at most, so that one batch does not hold the storage lock for long.
MAX_BATCH_CALLS = 512

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Drainer(abc.ABC):
    """One background task, started by the first item queued, that runs ``_drain`` while ``_queued()`` says
    something is waiting; the next item queued after it ends starts another."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._drainer: asyncio.Task[None] | None = None

    def _start(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain_all(), name=self._name)

    async def _drain_all(self) -> None:
        try:
            while self._queued():
                await self._drain()
        finally:
            self._drainer = None

    @abc.abstractmethod
    def _queued(self) -> bool: ...

    @abc.abstractmethod
    async def _drain(self) -> None:
        """Take what is queued now and run it."""


def _fail(futures: Collection[asyncio.Future[Any]], exc: BaseException) -> None:
    """Hand ``exc`` to each caller still waiting (cancellation at shutdown as a cancellation: none waits forever)."""
    for future in futures:
        if future.done():  # its caller was cancelled meanwhile
            continue
        if isinstance(exc, Exception):
            future.set_exception(exc)
        else:
            future.cancel()


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


class StorageBatcher(_Drainer):
    """``await batcher.call(storage.touch_pod, name, now=now)``: as ``asyncio.to_thread``, in batches."""

    def __init__(self) -> None:
        super().__init__("hub-storage-batch")
        self._calls: list[_Call] = []

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append(_Call(fn, args, kwargs, future))
        self._start()
        return await future

    def _queued(self) -> bool:
        return bool(self._calls)

    async def _drain(self) -> None:
        batch, self._calls = self._calls[:MAX_BATCH_CALLS], self._calls[MAX_BATCH_CALLS:]
        try:
            results = await asyncio.to_thread(_run_all, batch)
        except BaseException as exc:  # cancelled at shutdown
            _fail([call.future for call in [*batch, *self._calls]], exc)
            self._calls = []
            raise
        for call, (ok, value) in zip(batch, results, strict=True):
            if call.future.done():  # its caller was cancelled meanwhile
                continue
            if ok:
                call.future.set_result(value)
            else:
                call.future.set_exception(value)


class GatheredWrites(_Drainer):
    """``touch(pod, now)`` and ``ack(task_id, pod, now)`` queue; they are written through ``run``
    (``hubstate.HubState.db_batched``).

    A failed write is logged and dropped: an acknowledgement not recorded leaves its task pending (delivered
    again when the pod reconnects, and acknowledged again), and a pod's next heartbeat brings its touch.
    What queues is bounded by the callers: a touch per pod, an ack per task pushed on a connection."""

    def __init__(self, storage: Storage, run: Callable[..., Awaitable[Any]]) -> None:
        super().__init__("hub-gathered-writes")
        self._storage = storage
        self._run = run
        self._touches: dict[str, int] = {}
        self._acks: dict[tuple[str, str], int] = {}

    def touch(self, pod: str, now: int) -> None:
        self._touches[pod] = now
        self._start()

    def ack(self, task_id: str, pod: str, now: int) -> None:
        self._acks.setdefault((task_id, pod), now)
        self._start()

    def _queued(self) -> bool:
        return bool(self._touches or self._acks)

    async def _drain(self) -> None:
        touches, self._touches = self._touches, {}
        acks, self._acks = self._acks, {}
        try:
            await self._run(self._write_now, touches, acks)
        except Exception as exc:  # noqa: BLE001 - any backend's error: logged, the data comes again
            _log.warning("cannot record %d heartbeats and %d acknowledgements: %s", len(touches), len(acks), exc)

    def _write_now(self, touches: dict[str, int], acks: dict[tuple[str, str], int]) -> None:
        if touches:
            self._storage.touch_pods(touches)
        if acks:
            # Gathered within one write's time of each other: the earliest stands for all.
            self._storage.ack_deliveries(list(acks), now=min(acks.values()))


class GatheredReads(_Drainer, Generic[_K, _V]):
    """``await reads.get(key)``: ``read(keys)[key]`` (``absent()`` for a key it leaves out), read in one call
    with every key asked while the previous read ran, through ``run`` (``hubstate.HubState.db_batched``). Each caller
    asking a key gets its value; a failed read raises to each of its callers; a caller cancelled meanwhile is
    skipped (its key is read all the same)."""

    def __init__(
        self,
        read: Callable[[list[_K]], Mapping[_K, _V]],
        run: Callable[..., Awaitable[Any]],
        *,
        absent: Callable[[], _V],
        name: str,
    ) -> None:
        super().__init__(name)
        self._read = read
        self._run = run
        self._absent = absent
        self._asked: dict[_K, list[asyncio.Future[_V]]] = {}

    async def get(self, key: _K) -> _V:
        future: asyncio.Future[_V] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(key, []).append(future)
        self._start()
        return await future

    def _queued(self) -> bool:
        return bool(self._asked)

    async def _drain(self) -> None:
        asked, self._asked = self._asked, {}
        try:
            found: Mapping[_K, _V] = await self._run(self._read, list(asked))
        except BaseException as exc:  # any backend's error, or cancelled at shutdown
            _fail([future for futures in asked.values() for future in futures], exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, futures in asked.items():
            self._answer(futures, found[key] if key in found else self._absent())

    def _answer(self, futures: Sequence[asyncio.Future[_V]], value: _V) -> None:
        for future in futures:
            if not future.done():
                future.set_result(value)


class GatheredClaims(GatheredReads[_K, bool]):
    """``await claims.get(claim)``: whether this caller claimed ``claim`` (``claim(claims)`` returns those it
    recorded now: none recorded before, here or in any other hub process). Claims asked meanwhile go in one
    call; of callers asking the same claim together only the first is granted it, as one after another would."""

    def __init__(
        self, claim: Callable[[list[_K]], Collection[_K]], run: Callable[..., Awaitable[Any]], *, name: str
    ) -> None:
        super().__init__(lambda claims: dict.fromkeys(claim(claims), True), run, absent=lambda: False, name=name)

    def _answer(self, futures: Sequence[asyncio.Future[bool]], value: bool) -> None:
        first, *later = futures
        if not first.done():  # a cancelled first caller's grant goes to nobody: the nonce stays spent
            first.set_result(value)
        for future in later:
            if not future.done():
                future.set_result(False)
