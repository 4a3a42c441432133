"""The hub's per-app state, which every route handler reads (``hub_of(request)``), and its wake-ups.

Owns ``HubState``: storage, blobs, limits, the replay cache and rate limiter, the gathered storage calls of
many pod connections (``batching.py``), the fan-out (``fanout.Fanout``), and who waits for what. A waiter (a
pod's push loop or long poll, a modeller's wait for results, a secure round's long poll) sleeps on a key in its
own process (``HubState.wakeup``, ``HubState.long_poll``); a write that concerns it calls
``HubState.notify(key)``, which wakes local waiters and publishes the key to the other hub processes
(``cluster.py``), whose wake-ups reach ``HubState.on_cluster_key``. Also what the push path reads of storage: a
task as it is pushed (kept by the fan-out, else prepared again once however many pods ask) and what a pod has
not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from aiohttp import web

from pod_agent.errors import HubError
from pod_agent.hub.admission import RegistrationPolicy
from pod_agent.hub.batching import GatheredClaims, GatheredReads, GatheredWrites, StorageBatcher
from pod_agent.hub.blobs import Blobs
from pod_agent.hub.cluster import Cluster
from pod_agent.hub.fanout import Fanout, PreparedTask, collector_paused, fanout_task, prepare, tree_from_registrations
from pod_agent.hub.limits import HubLimits, RateLimiter
from pod_agent.hub.storage import STRANGER, NonceClaim, PodRecord, Storage
from pod_agent.protocol import MAX_REQUEST_SKEW_S, PublicKey, RequestReplayCache, SignedHeaders

_log = logging.getLogger(__name__)
_R = TypeVar("_R")

# A long poll returns at least this often so proxies and the pod notice a dead peer.
MAX_LONG_POLL_S = 30.0
# A pod not heard from within this many heartbeat intervals is shown offline.
OFFLINE_AFTER_HEARTBEATS = 3
# Signers' keys kept parsed (by their base64 text, so a re-keyed pod's new key is parsed anew): a fleet's every
# handshake had decoded, loaded and hashed its key again. Forgotten all at once past this many.
_PARSED_KEYS = 65_536
# How often (in claims) a process forgets nonces past the clock window: requests that old are refused anyway.
_NONCE_PRUNE_EVERY = 1000


class HubState:
    """Per-app state: storage, blobs, limits, replay cache, rates, the fan-out, and who waits for what."""

    def __init__(
        self,
        storage: Storage,
        blobs: Blobs,
        clock: Callable[[], float],
        *,
        registration: RegistrationPolicy,
        limits: HubLimits,
        cluster: Cluster,
    ) -> None:
        self.storage = storage
        self.cluster = cluster
        self.blobs = blobs
        self.clock = clock
        self.registration: RegistrationPolicy = registration
        self.limits = limits
        # The cache refuses a replay this process saw without a database write; storage's claim is the record
        # that outlives the process and that every process shares.
        self.replay = RequestReplayCache(
            max_entries=limits.replay_entries, max_entries_per_key=limits.replay_entries_per_key
        )
        self.rates = RateLimiter(rate_per_s=limits.rate_per_s, burst=limits.rate_burst)
        self._wakeups: dict[str, asyncio.Event] = {}
        self.fanout = Fanout()
        self.batcher = StorageBatcher()
        self.writes = GatheredWrites(storage, self.db_batched)
        self.reads: GatheredReads[str, list[str]] = GatheredReads(
            storage.pending_task_ids, self.db_batched, absent=list, name="hub-pending-reads"
        )
        # Every signed request's signer; a fleet reconnecting to this process at once is looked up together.
        self.signers = GatheredReads(
            storage.key_standings, self.db_batched, absent=lambda: STRANGER, name="hub-signer-reads"
        )
        # A reconnecting fleet's handshakes claim their nonces together: one statement per batch, not per request.
        self._nonces = GatheredClaims(storage.claim_nonces, self.db_batched, name="hub-nonce-claims")
        self._claimed = 0
        # A task prepared again from storage (``prepared``): once, however many pods ask for it at once.
        self.preparing: dict[str, asyncio.Future[PreparedTask | None]] = {}
        self.background: set[asyncio.Task[None]] = set()  # fan-outs another hub process asked for
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._keys: dict[str, PublicKey] = {}

    def now(self) -> int:
        return int(self.clock())

    def parsed_key(self, b64: str) -> PublicKey:
        key = self._keys.get(b64)
        if key is None:
            if len(self._keys) >= _PARSED_KEYS:
                self._keys.clear()
            key = self._keys[b64] = PublicKey.from_b64(b64)
        return key

    async def claim_nonce(self, signed: SignedHeaders, *, now: int) -> bool:
        """Whether no request with this key and nonce was seen before, by any process of the hub, before any
        restart (recording it)."""
        self._claimed += 1
        if self._claimed % _NONCE_PRUNE_EVERY == 0:
            await self.db(self.storage.prune_nonces, stamped_before=now - 2 * MAX_REQUEST_SKEW_S)
        return await self._nonces.get(NonceClaim(signed.key_id, signed.nonce, signed.timestamp))

    def wakeup(self, pod: str) -> asyncio.Event:
        return self._wakeups.setdefault(pod, asyncio.Event())

    def notify(self, pod: str) -> None:
        """Wake the waiters on ``pod`` (a pod name or a wake-up key) here and in the other hub processes."""
        self.wake_local(pod)
        self.cluster.publish(pod)

    def wake_local(self, key: str) -> None:
        event = self._wakeups.pop(key, None)
        if event is not None:
            event.set()

    def wake_all_local(self) -> None:
        for key in list(self._wakeups):
            self.wake_local(key)

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def db_batched(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """As ``db``, for the calls every pod connection makes (touch, ack, pending): run in batches, one after
        another, where storage is in this process; a database server (shared) takes them in parallel instead,
        each call a round trip that a batch would only queue behind the others."""
        if self.cluster.shared:
            return await self.db(fn, *args, **kwargs)
        return await self.batcher.call(fn, *args, **kwargs)

    # -- wake-ups ----------------------------------------------------------------------------

    def on_cluster_key(self, key: str) -> None:
        """A wake-up from another hub process: a large cohort's task to push here, or waiters to wake."""
        task_id = fanout_task(key)
        if task_id is None:
            self.wake_local(key)
            return
        job = asyncio.create_task(self._fan_out_from_elsewhere(task_id), name=f"fanout:{task_id}")
        self.background.add(job)
        job.add_done_callback(self.background.discard)

    async def _fan_out_from_elsewhere(self, task_id: str) -> None:
        """Another hub process took a large cohort's task: push it to the pods connected here."""
        try:
            with collector_paused():
                prepared = await self.prepared(task_id)
                if prepared is not None:
                    await self.fanout.push(prepared, prepared.tree.pods, wake=self.wake_local)
        except Exception as exc:  # noqa: BLE001 - any backend's error; the pods read it on reconnecting
            _log.warning("cannot push task %s that another hub process took: %s", task_id, exc)

    async def long_poll(
        self, key: str, wait_s: float, *, fetch: Callable[[], Awaitable[_R]], ready: Callable[[_R], bool]
    ) -> _R:
        """``fetch()`` once ``ready`` says so, or when ``wait_s`` has passed; woken by ``notify(key)``."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            # Taken before the fetch, so a notify between the fetch and the wait is not lost.
            event = self.wakeup(key)
            found = await fetch()
            remaining = deadline - asyncio.get_running_loop().time()
            if ready(found) or remaining <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    # -- what the push path reads ------------------------------------------------------------

    async def prepared(self, task_id: str) -> PreparedTask | None:
        """The task as the push path sends it (None: no such task): kept since its submission, else read and
        prepared again from storage, once however many pods ask for it together (thousands, woken by another hub
        process's fan-out, or moving here from a process that died before it told this one of the task)."""
        prepared = self.fanout.get(task_id)
        if prepared is not None:
            return prepared
        pending = self.preparing.get(task_id)
        if pending is None:
            pending = self.preparing[task_id] = asyncio.ensure_future(self._prepare_again(task_id))
            pending.add_done_callback(lambda _: self.preparing.pop(task_id, None))
        return await asyncio.shield(pending)  # one pod's disconnecting does not cancel the others' preparation

    async def _prepare_again(self, task_id: str) -> PreparedTask | None:
        # Its record lists its whole cohort: read once here, not once per pod that asks (``pending``).
        task = await self.db(self.storage.get_task, task_id)
        if task is None:
            return None
        registrations = await self.db(self.storage.cohort_registrations, task.task_id)
        # In a thread, as at submission: the cohort's hashing would hold heartbeats waiting.
        tree = await asyncio.to_thread(tree_from_registrations, task, registrations)
        return self.fanout.keep(prepare(task, tree))

    async def pending(self, pod: str, *, sent: Collection[str] = ()) -> list[PreparedTask]:
        """What ``pod`` has not acknowledged yet, read from storage (on connecting, when woken from elsewhere, and
        every MAX_LONG_POLL_S), less what was ``sent`` on its connection. The ids only: a task is read whole only
        when not prepared here, since its record lists its whole cohort (10,000 pods re-reading a 10,000-name list
        each had taken the hub from 300 MB to 1 GB)."""
        out = []
        for task_id in await self.reads.get(pod):
            if task_id in sent:
                continue
            try:
                prepared = await self.prepared(task_id)
            except HubError as exc:
                _log.warning("task not deliverable: %s", exc, extra={"pod": pod})
                continue
            if prepared is not None:
                out.append(prepared)
        return out

    def online(self, pod: PodRecord, now: int) -> bool:
        """Connected now, or heard from within OFFLINE_AFTER_HEARTBEATS of its heartbeat intervals."""
        return self.fanout.connected(pod.name) > 0 or now - pod.last_seen <= OFFLINE_AFTER_HEARTBEATS * pod.heartbeat_s


HUB = web.AppKey("hub", HubState)


def hub_of(request: web.Request) -> HubState:
    return request.app[HUB]


def task_wakeup_key(task_id: str) -> str:
    """The wake-up key of a task's modeller waiting for its results (shares the pods' table; a pod name cannot
    contain ':')."""
    return f"task:{task_id}"
