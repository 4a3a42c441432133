"""The pod's link to its hub: register, hold the task sockets (or long poll), reconnect through backoff.

Owns ``HubLink``, the daemon's hub-link loop, which tells its owner what happens through a
``LinkListener`` (admitted, connected, down, each pushed message). Forever, until cancelled:

- register (or update) the pod when its registration differs from the one the hub last admitted, or when
  the hub refuses the session (401/403: its database replaced, the pod released, the key held for approval
  again); a registration held for the hub admin's approval is asked again after a backoff step. A
  reconnection that would send the same registration opens its session at once: one signed request, not
  two, at a hub process that may be taking over thousands of pods;
- hold the pod's task socket, and its standby where the hub has another URL (``hold_task_sockets``), or
  long poll where the hub offers no WebSocket;
- on a retryable failure wait a backoff step (none for the first failure when the next try goes to another
  of the hub's URLs) and go on.

The failover benchmark's simulated pods run this same loop, with listeners that time what it does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from pod_agent.agent.backoff import RETRYABLE, Backoff
from pod_agent.agent.hubclient import HubClient, TaskStream
from pod_agent.agent.tasksockets import hold_task_sockets
from pod_agent.config import HubSection
from pod_agent.errors import HubRejected
from pod_agent.protocol import HubPush, PodRegistration

# A long poll answered empty in under this share of its wait is a hub making the pod spin: the next
# poll waits a backoff step first (an honest hub answers early only with tasks).
EARLY_EMPTY_POLL_SHARE = 0.5

_log = logging.getLogger(__name__)


class LinkListener(Protocol):
    """What a ``HubLink`` tells its owner."""

    def admitted(self) -> None:
        """The hub admitted a registration (it did not hold it for approval)."""

    def connected(self, base: str) -> None:
        """A task socket opened at the hub URL ``base`` (or a standby was promoted there), or a long poll
        was answered."""

    def down(self, exc: BaseException) -> None:
        """A retryable failure ended the session: the link backs off and tries again."""

    async def push(self, push: HubPush) -> None:
        """A message the hub pushed (a heartbeat's answer, a task), or a task a long poll returned."""


class HubLink:
    """The loop of the module docstring over ``hub``: ``run`` until cancelled (``stop`` cuts its waits short)."""

    def __init__(
        self, hub: HubClient, section: HubSection, *, registration: Callable[[], PodRegistration],
        listener: LinkListener, stop: asyncio.Event, backoff: Backoff | None = None, first_beat_s: float = 0.0,
        on_standby: Callable[[TaskStream], None] = lambda _: None,
    ) -> None:
        """``registration()`` is called before each try (it may change: share categories reloaded);
        ``first_beat_s`` delays the first socket's first heartbeat; ``on_standby(stream)`` each time a
        standby socket opens."""
        self.hub = hub
        self.section = section
        self.listener = listener
        self.backoff = backoff if backoff is not None else Backoff(section.backoff_initial_s, section.backoff_cap_s)
        self._registration = registration
        self._stop = stop
        self._first_beat_s = first_beat_s
        self._on_standby = on_standby

    async def run(self) -> None:
        hub = self.hub
        use_websocket = True
        admitted: PodRegistration | None = None  # the registration the hub last admitted
        while True:
            registration = self._registration()
            base = hub.base
            try:
                fresh = registration != admitted
                if fresh:
                    admitted = None
                    registered = await hub.register(registration)
                    if registered.pending:
                        # The hub's admin has not approved this key yet: its other routes would answer 403.
                        _log.warning("the hub at %s holds this pod's registration for approval (%s): its admin "
                                     "runs `pod-agent hub approve %s`; asking again", hub.base,
                                     registered.message or "pending", registered.key_id)
                        await self.backoff.wait(self._stop)
                        continue
                    self.listener.admitted()
                    admitted = registration
                try:
                    await (self._websocket_session() if use_websocket else self._poll_session())
                except HubRejected as exc:
                    if exc.status in (401, 403) and not fresh:
                        _log.warning("the hub at %s refused this pod's session (%s); registering again",
                                     hub.base, exc.status)
                        admitted = None
                        continue
                    if exc.status in (401, 403) or not use_websocket:
                        raise
                    _log.warning("hub offers no WebSocket (%s); falling back to long polling", exc.status)
                    use_websocket = False
                    continue
            except RETRYABLE as exc:
                self.listener.down(exc)
                _log.warning("hub link down: %s; retrying", exc)
            await self.backoff.wait(self._stop, elsewhere=hub.base != base)

    async def _websocket_session(self) -> None:
        def opened(stream: TaskStream) -> None:
            self.backoff.reset()
            self.listener.connected(stream.base)

        first_beat_s, self._first_beat_s = self._first_beat_s, 0.0  # the first socket's only
        await hold_task_sockets(
            self.hub, heartbeat_s=self.section.heartbeat_s, on_push=self.listener.push, on_open=opened,
            standby=self.section.standby_socket, backoff_cap_s=self.section.backoff_cap_s,
            on_standby=self._on_standby, first_beat_s=first_beat_s,
        )

    async def _poll_session(self) -> None:
        wait_s = self.section.heartbeat_s
        while True:
            asked = time.monotonic()
            reply = await self.hub.pending_tasks(wait_s=wait_s)
            self.listener.connected(self.hub.base)
            for delivery in reply.tasks:
                await self.listener.push(delivery)
            if reply.tasks or time.monotonic() - asked >= EARLY_EMPTY_POLL_SHARE * wait_s:
                self.backoff.reset()
            else:
                await self.backoff.wait(self._stop)
