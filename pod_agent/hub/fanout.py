"""Fan-out of a task to its cohort: each task encoded once, each pod sent only its own cohort proof.

Owns ``Fanout``, the push path's memory: per recent task the delivery's JSON up to the proof (the signed
envelope, encoded once, not once per pod) and the cohort tree that gives each pod its entry and inclusion
proof (``protocol.cohort``); the task WebSockets open to this process (``Link``: one per connection, with
the tasks pushed on it, each once); and the push of a large cohort's task (ANNOUNCE_FROM_PODS or more)
straight from the fan-out to those sockets, PUSH_BATCH pods at a time with the event loop served in
between, so that heartbeats are answered meanwhile. A pod's own push loop (``pod_routes._push_loop``) is
woken only when its socket still holds unsent bytes (a pod that does not read must not hold the
fan-out): the task is announced to it and it sends it. A cohort under ANNOUNCE_FROM_PODS is not pushed
from here: its pods are woken and read storage, as on connecting, and so also get any other delivery
pending for them. Storage stays the record of what is pending (a pod that connects reads it there);
another hub process is told of a large cohort's task once (``fanout_key``) and pushes it to the pods
connected to it in the same way.

Memory: at most ``max_tasks`` prepared tasks are kept (least recently used go first), a pod's
announcements are dropped when it disconnects, and TRIM_AFTER_S after the last fan-out the cyclic collector,
held off since the submission (a collection stops the loop while pods wait for the task and heartbeats for
their answer), runs once and the heap pages freed go back to the OS (glibc's ``malloc_trim``: otherwise the
process keeps its peak), so the hub's memory returns to its idle level once a fan-out is over. A task
dropped here is prepared again from storage when needed: its cohort is rebuilt from the pods'
registrations and used only if it gives the signed root.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from aiohttp import web

from pod_agent.errors import HubError, ProtocolError
from pod_agent.hub.storage import HubTaskRecord
from pod_agent.protocol import CohortEntry, CohortTree, TaskPayload, cohort_tree

# Prepared tasks kept: a few fan-outs in flight at once; older ones are prepared again on demand.
DEFAULT_MAX_TASKS = 8
# Cohorts from this size are pushed from the fan-out: below it a storage read per pod costs little.
ANNOUNCE_FROM_PODS = 64
# Connected pods pushed before the event loop serves anything else: about 4.5 ms of CPU. 256 (9 ms, and with the
# acknowledgements that came in meanwhile passes of 11-13 ms CPU, 20-60 ms on a busy host) were among the longest
# waits of a heartbeat's answer during a fan-out to 10,000 pods; 64 served the pods' acknowledgements between
# every few sends, and the last pods got the task later (push 0.6-2.0 s against 0.6-0.7 s at 128).
PUSH_BATCH = 128
# A delivery larger than this goes through its pod's push loop: below asyncio's default high-water mark
# (64 KiB), a write to a socket with nothing queued cannot pause it, so the fan-out never waits on a pod.
DIRECT_PUSH_MAX_BYTES = 32 * 1024
_FANOUT_KEY = "fanout:"  # a pod name cannot contain ':' (the wake-up keys' table is shared)
# Quiet seconds after a fan-out's last push before the collector runs and freed memory is handed back (the pushes
# and their acknowledgements are over by then at 10,000 pods).
TRIM_AFTER_S = 10.0
# Fan-outs that follow each other closer than TRIM_AFTER_S hold the collector off at most this long.
MAX_HOLD_S = 60.0


def _malloc_trim() -> None:
    """Return the free pages at the top and inside the C heap to the OS, where the C library can (glibc).

    The process's own symbols (``CDLL(None)``, dlopen of the main program) include its C library's: no
    ``find_library``, which runs ``ldconfig`` in a subprocess, on the event loop."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


_log = logging.getLogger(__name__)


def fanout_key(task_id: str) -> str:
    """The cluster key that tells the other hub processes to push a large cohort's task to their pods."""
    return _FANOUT_KEY + task_id


def fanout_task(key: str) -> str | None:
    """The task id of a ``fanout_key``; None for any other wake-up key."""
    return key[len(_FANOUT_KEY):] if key.startswith(_FANOUT_KEY) else None


_held_by = [0]  # submissions in progress and fan-outs not yet settled that hold the cyclic collector off
_held_lock = threading.Lock()  # a settle timer whose loop has closed releases from its own thread


def _hold_collector() -> Callable[[], None] | None:
    """Turn the cyclic collector off until the returned release is called (once; the last release turns it on);
    None when someone else had turned it off (theirs to turn on)."""
    with _held_lock:
        if _held_by[0] == 0 and not gc.isenabled():
            return None
        _held_by[0] += 1
        gc.disable()
    released = threading.Event()

    def release() -> None:
        with _held_lock:
            if released.is_set():
                return
            released.set()
            _held_by[0] -= 1
            if _held_by[0] == 0:
                gc.enable()

    return release


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection while a task is taken and goes out: with 10,000 pods connected a full one traverses
    millions of objects (0.3-0.5 s, heartbeats unanswered), and a large cohort's submission allocates enough to
    set one off. The collector runs again when the last such block ends, or, where the block published a task,
    when its fan-out settles (``Fanout.settle_later``)."""
    release = _hold_collector()
    try:
        yield
    finally:
        if release is not None:
            release()


@dataclass(frozen=True)
class PreparedTask:
    """One task's delivery as every pod gets it, less the pod's own proof."""

    task_id: str
    head: str  # '{"type": "task", "task_id": ..., "envelope": ..., "proof": '
    tree: CohortTree

    def delivery(self, pod: str) -> str:
        """The JSON text of ``hub_api.TaskDelivery`` for ``pod``: the shared head and the pod's proof."""
        return self.head + self.tree.proof_json(pod) + "}"


@dataclass(eq=False)
class Link:
    """One open task WebSocket of a pod, and the tasks pushed on it (each once per connection)."""

    pod: str
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    standby: bool = False  # held open for the pod at this process, not pushed on (until promoted)
    sent: set[str] = field(default_factory=set)

    def idle(self) -> bool:
        """Nothing queued on the socket: a push now goes to the kernel at once."""
        transport = self.transport
        return (
            isinstance(transport, asyncio.WriteTransport) and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    async def send(self, task: PreparedTask, delivery: str | None = None) -> None:
        """Push ``task`` unless it was pushed on this connection already."""
        if task.task_id in self.sent:
            return
        self.sent.add(task.task_id)  # before the send: a fan-out and the push loop never both send it
        await self.ws.send_str(delivery if delivery is not None else task.delivery(self.pod))


def prepare(record: HubTaskRecord, tree: CohortTree) -> PreparedTask:
    head = json.dumps({"type": "task", "task_id": record.task_id, "envelope": record.envelope.decode()})
    return PreparedTask(task_id=record.task_id, head=head[:-1] + ', "proof": ', tree=tree)


def tree_from_registrations(record: HubTaskRecord, registrations: Iterable[tuple[str, str, str]]) -> CohortTree:
    """The task's cohort rebuilt from its pods' registrations (``Storage.cohort_registrations``: name, schema
    hash and key id as registered now), checked against the signed root; HubError when a pod re-registered
    or was released since and the root no longer matches."""
    payload = TaskPayload.model_validate(json.loads(record.envelope)["payload"])
    entries = [
        CohortEntry(pod=name, schema_hash=schema_hash, key_id=key_id) for name, schema_hash, key_id in registrations
    ]
    try:
        tree = cohort_tree(entries)
    except ProtocolError as exc:
        raise HubError(f"task {record.task_id}: its cohort cannot be rebuilt: {exc}", status=500) from exc
    if tree.commitment != payload.cohort:
        raise HubError(
            f"task {record.task_id}: its pods' registrations changed since it was submitted, so the hub cannot "
            "prove them in its signed cohort; the modeller submits it again",
            status=409,
        )
    return tree


class Fanout:
    """Prepared tasks (bounded, least recently used dropped), the pods' open task sockets, and the tasks
    announced to a pod's push loop."""

    def __init__(self, *, max_tasks: int = DEFAULT_MAX_TASKS, settle_after_s: float = TRIM_AFTER_S) -> None:
        self._max_tasks = max_tasks
        self._settle_after_s = settle_after_s
        self._prepared: OrderedDict[str, PreparedTask] = OrderedDict()
        self._links: dict[str, list[Link]] = {}
        self._announced: dict[str, list[PreparedTask]] = {}
        self._hold: Callable[[], None] | None = None  # the collector held off until the fan-outs settle
        self._held_since = 0.0
        self._settle: threading.Timer | None = None
        self._settles = 0  # the current settle_later's number: a timer superseded meanwhile does nothing

    def keep(self, prepared: PreparedTask) -> PreparedTask:
        self._prepared[prepared.task_id] = prepared
        self._prepared.move_to_end(prepared.task_id)
        while len(self._prepared) > self._max_tasks:
            self._prepared.popitem(last=False)
        return prepared

    def get(self, task_id: str) -> PreparedTask | None:
        prepared = self._prepared.get(task_id)
        if prepared is not None:
            self._prepared.move_to_end(task_id)
        return prepared

    def publish(self, record: HubTaskRecord, tree: CohortTree) -> PreparedTask:
        """Prepare a submitted task once; the fan-out settles TRIM_AFTER_S after the last (``settle_later``)."""
        prepared = self.keep(prepare(record, tree))
        self.settle_later()
        return prepared

    def settle_later(self) -> None:
        """Hold the cyclic collector off until TRIM_AFTER_S after the last fan-out (at most MAX_HOLD_S after the
        first of those that follow each other closer): a collection as the pushes end, or among the pods'
        acknowledgements, stopped the loop for 20-120 ms (CPU) at 10,000 pods, the tail of the heartbeats' round
        trips. Then ``settle``: one collection, and the freed memory handed back. The timer is a thread's, so a
        hold ends even where the event loop has closed meanwhile."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if self._hold is None:
            self._hold = _hold_collector() or (lambda: None)
            self._held_since = now
        if self._settle is not None:
            self._settle.cancel()
        self._settles += 1
        delay = max(0.0, min(self._settle_after_s, self._held_since + MAX_HOLD_S - now))
        self._settle = threading.Timer(delay, self._settle_on, args=(loop, self._settles))
        self._settle.daemon = True
        self._settle.start()

    def _settle_on(self, loop: asyncio.AbstractEventLoop, number: int) -> None:
        try:
            loop.call_soon_threadsafe(self.settle, number)
        except RuntimeError:  # the loop has closed: nothing of it to collect for, but the collector goes back on
            self.settle(number, collect=False)

    def settle(self, number: int | None = None, *, collect: bool = True) -> None:
        """End the hold on the collector, then (``collect``) run it once and hand the freed heap pages back; a
        ``number`` other than the latest ``settle_later``'s is a superseded timer's, and does nothing."""
        if number is not None and number != self._settles:
            return
        release, self._hold = self._hold, None
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        if release is not None:
            release()
        if collect:
            if gc.isenabled():
                gc.collect()
            _malloc_trim()

    def connect(self, link: Link) -> None:
        self._links.setdefault(link.pod, []).append(link)

    def disconnect(self, link: Link) -> None:
        """``link`` closed; with the pod's last one its untaken announcements go (it reads storage when it
        reconnects)."""
        links = self._links.get(link.pod, [])
        if link in links:
            links.remove(link)
        if not links:
            self._links.pop(link.pod, None)
            self._announced.pop(link.pod, None)

    def connected(self, pod: str) -> int:
        """How many task sockets ``pod`` holds open to this process."""
        return len(self._links.get(pod, ()))

    async def push(self, prepared: PreparedTask, pods: Iterable[str], *, wake: Callable[[str], None]) -> None:
        """Push ``prepared`` to each of ``pods`` connected here, PUSH_BATCH of them at a time with the event loop
        served in between. ``wake(pod)`` for the others (a long poll here) and for a pod whose socket has
        bytes queued, after announcing the task to its push loop."""
        with collector_paused():
            batch = 0  # only pods connected here count: a look-up for one connected elsewhere costs little
            for pod in pods:
                if batch == PUSH_BATCH:
                    await asyncio.sleep(0)
                    batch = 0
                links = self._links.get(pod)
                if not links:
                    wake(pod)
                    continue
                batch += 1
                delivery = prepared.delivery(pod)
                for link in list(links):
                    if prepared.task_id in link.sent:
                        continue
                    if len(delivery) > DIRECT_PUSH_MAX_BYTES or not link.idle():
                        self._announced.setdefault(pod, []).append(prepared)
                        wake(pod)
                        continue
                    try:
                        await link.send(prepared, delivery)  # never suspends: the socket's buffer was empty
                    except ConnectionError as exc:  # closing meanwhile: it reads storage when it reconnects
                        _log.debug("push of task %s to %s failed: %s", prepared.task_id, pod, exc)
        self.settle_later()

    def take(self, pod: str) -> list[PreparedTask] | None:
        """The tasks announced to ``pod`` since the last take; None when there were none."""
        return self._announced.pop(pod, None)
