"""The pod's task sockets to its hub: the one tasks are pushed on, and a standby at another hub process.

Owns ``hold_task_sockets``, which the daemon's hub link runs while the hub offers WebSockets: it opens the
pod's task socket (``HubClient.task_stream``), heartbeats on it and hands every pushed message to the
caller until the socket ends. Where the hub has more than one URL (several processes over one database,
``hub.fallback_urls``) and ``hub.standby_socket`` is on, it also keeps a standby socket open at the next
URL (``HubClient.standby_stream``: signed and opened ahead, heartbeated every STANDBY_HEARTBEAT_EVERY
intervals, never pushed on). When the task socket ends, the standby is promoted by one frame
(``HubClient.promote``) and is the task socket from then on, and a new standby is opened towards the
next URL (the one that failed, with two).

Why ahead: when a hub process dies, every pod it served would otherwise open a signed socket at the
survivor in the same second, ~0.4 ms of the survivor's CPU and ~0.6 ms of the pod's each (~2 s of one
core per 5,000 pods), while the survivor fans out the task that must reach them. Opened ahead, those
handshakes were paid when nothing waited on them; a promotion costs a frame and the pending tasks' read.

A standby is a spare, so it is opened again unhurried: after one ends, and after a promotion (whose next
URL is the process that just failed), the next try waits a full-jitter step of at least the standby's
heartbeat interval (``STANDBY_HEARTBEAT_EVERY`` heartbeats, 60 s by default). When a process dies, the pods
of the whole federation lose a socket there; retried at the task socket's pace, their tries at the dead
process took more of the pods' CPU than the moved pods' promotions (10,000 pods: 10.6 s against 5.0 s
without standbys), and they would meet a restarted process as one herd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from pod_agent.agent.backoff import RETRYABLE, Backoff
from pod_agent.agent.hubclient import HubClient, TaskStream
from pod_agent.protocol import HeartbeatAck, HubPush, PodHeartbeat

# A silent socket is declared dead after this many of its heartbeat intervals without any message.
DEAD_AFTER_HEARTBEATS = 3.0
# A standby socket heartbeats this many times less often: it only has to be known alive (the pod's word on
# its liveness goes on its task socket), and a federation's standbys double the sockets a hub process holds.
STANDBY_HEARTBEAT_EVERY = 4

_log = logging.getLogger(__name__)

OnPush = Callable[[HubPush], Awaitable[None]]


class _Socket:
    """One open task stream, read and heartbeated by its own tasks until it ends or is closed."""

    def __init__(self, stream: TaskStream, *, on_push: OnPush, interval_s: float, first_beat_s: float = 0.0) -> None:
        self.stream = stream
        self.on_push = on_push
        self._interval_s = interval_s
        self.reader = asyncio.create_task(self._read(), name=f"task socket {stream.base}")
        self._beats = asyncio.create_task(self._beat(first_beat_s), name=f"heartbeat {stream.base}")

    async def _read(self) -> None:
        while True:
            push = await self.stream.receive(timeout_s=DEAD_AFTER_HEARTBEATS * self._interval_s)
            await self.on_push(push)  # looked up once it came: a promotion while waiting changes it

    async def _beat(self, first_beat_s: float) -> None:
        if first_beat_s:
            await asyncio.sleep(first_beat_s)
        while True:
            await self.stream.send(PodHeartbeat())
            await asyncio.sleep(self._interval_s)

    def promoted(self, interval_s: float, on_push: OnPush) -> None:
        """Pushes go to ``on_push`` and heartbeats every ``interval_s`` from now. The first waits an interval:
        the hub records the pod alive as it promotes the socket, and a heartbeat at once from each of thousands
        of moved pods would be answered while the survivor pushes them their tasks."""
        self.on_push = on_push
        self._interval_s = interval_s
        self._beats.cancel()
        self._beats = asyncio.create_task(self._beat(interval_s), name=f"heartbeat {self.stream.base}")

    @property
    def alive(self) -> bool:
        return not self.reader.done() and not self.stream.closed

    async def close(self) -> None:
        for task in (self._beats, self.reader):
            task.cancel()
            # What ended a task was the caller's to see on the reader; a heartbeat's send fails with the socket.
            with contextlib.suppress(asyncio.CancelledError, *RETRYABLE):
                await task
        await self.stream.__aexit__(None, None, None)


class _Standby:
    """A standby socket kept open at the hub's ``standby_base``, opened again with backoff when it ends.

    While one is open nothing of this object's runs, and when it ends (its reader's done callback) or is
    promoted, the next try is only scheduled, its wait a timer: at a process's death a federation's pods
    lose their standbys there all at once, on the cores the moved pods' promotions need."""

    def __init__(
        self, hub: HubClient, *, heartbeat_s: float, on_push: OnPush, backoff_cap_s: float,
        on_open: Callable[[TaskStream], None],
    ) -> None:
        self._hub = hub
        self._on_open = on_open
        self._heartbeat_s = heartbeat_s
        self._on_push = on_push
        interval_s = STANDBY_HEARTBEAT_EVERY * heartbeat_s
        self._backoff = Backoff(interval_s, max(interval_s, backoff_cap_s))
        self._socket: _Socket | None = None
        self._ended: _Socket | None = None  # a standby that ended by itself, closed at the next try
        self._timer: asyncio.TimerHandle | None = None
        self._opener: asyncio.Task[None] | None = asyncio.create_task(self._open(), name="standby task socket")

    def _try_later(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._backoff.next_delay(), self._try_now)

    def _try_now(self) -> None:
        self._timer = None
        self._opener = asyncio.create_task(self._open(), name="standby task socket")

    async def _open(self) -> None:
        if self._ended is not None:
            ended, self._ended = self._ended, None
            await ended.close()
        try:
            stream = await self._hub.standby_stream(heartbeat_s=self._heartbeat_s)
        except RETRYABLE as exc:
            _log.debug("standby task socket not opened: %s", exc)
            self._opener = None
            self._try_later()
            return
        self._backoff.reset()
        socket = self._socket = _Socket(
            stream, on_push=self._standby_push, interval_s=STANDBY_HEARTBEAT_EVERY * self._heartbeat_s,
        )
        socket.reader.add_done_callback(self._on_end)
        self._opener = None
        self._on_open(stream)

    def _on_end(self, reader: asyncio.Task[None]) -> None:
        ended = self._ended = self._socket
        self._socket = None
        if ended is not None:
            why = "cancelled" if reader.cancelled() else reader.exception()
            _log.debug("standby task socket at %s ended: %s", ended.stream.base, why)
        self._try_later()

    async def _standby_push(self, push: HubPush) -> None:
        # Its heartbeats' answers say only that the standby is alive, not the task socket: not the caller's.
        # The hub pushes no task here; one pushed anyway is handed on, to be verified like any other.
        if not isinstance(push, HeartbeatAck):
            await self._on_push(push)

    async def take(self) -> _Socket | None:
        """The standby socket, promoted to the pod's task socket (and a new standby kept from now, its first try
        after a step: it goes to the next URL, with two the process that just failed); None when none is open."""
        socket = self._socket
        if socket is None or not socket.alive:
            return None
        self._socket = None
        socket.reader.remove_done_callback(self._on_end)
        try:
            await self._hub.promote(socket.stream)
        except RETRYABLE:  # ConnectionError among them (an OSError): the standby ended meanwhile
            await socket.close()
            socket = None
        else:
            socket.promoted(self._heartbeat_s, self._on_push)
        self._try_later()
        return socket

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
        for socket in (self._socket, self._ended):
            if socket is not None:
                socket.reader.remove_done_callback(self._on_end)
                await socket.close()


async def hold_task_sockets(
    hub: HubClient, *, heartbeat_s: float, on_push: OnPush, on_open: Callable[[TaskStream], None],
    standby: bool, backoff_cap_s: float, on_standby: Callable[[TaskStream], None] = lambda _: None,
    first_beat_s: float = 0.0,
) -> None:
    """Serve the pod's task socket, and with ``standby`` one kept at the hub's next URL, until the task socket
    ends with no standby open to take over: raise what ended it. ``on_open(stream)`` each time a socket
    becomes the task socket, ``on_standby(stream)`` each time a standby opens; ``backoff_cap_s`` caps the
    standby's reopening steps; ``first_beat_s`` delays the first socket's first heartbeat."""
    socket = _Socket(
        await hub.task_stream(heartbeat_s=heartbeat_s), on_push=on_push, interval_s=heartbeat_s,
        first_beat_s=first_beat_s,
    )
    spare = _Standby(hub, heartbeat_s=heartbeat_s, on_push=on_push, backoff_cap_s=backoff_cap_s,
                     on_open=on_standby) if (
        standby and hub.standby_base is not None
    ) else None
    try:
        on_open(socket.stream)
        while True:
            try:
                await socket.reader
            except RETRYABLE as exc:
                taken = await spare.take() if spare is not None else None
                if taken is None:
                    raise
                ended, socket = socket, taken
                on_open(socket.stream)
                _log.warning("hub task socket at %s ended (%s); the standby at %s takes over",
                             ended.stream.base, exc, socket.stream.base)
                await ended.close()
    finally:
        await socket.close()
        if spare is not None:
            await spare.close()
