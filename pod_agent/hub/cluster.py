"""What hub processes serving one federation share besides storage: wake-ups.

Owns the ``Cluster`` interface the server talks to and its one-process form. A waiter (a pod's
push loop or long poll, a modeller's wait for results, a secure round's long poll) sleeps on a
key in its own process (``hubstate.HubState.wakeup``); a write that concerns it calls
``HubState.notify(key)``, which wakes local waiters and ``publish``es the key to the other processes,
whose ``run`` loop wakes theirs. (Request nonces are claimed in storage, which every process shares.)

``SingleProcess`` is the embedded hub's (SQLite, one process): nothing to publish.
``postgres.PostgresCluster`` is the one for several processes on PostgreSQL (LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Cluster(Protocol):
    """The other hub processes, as one hub process sees them."""

    # Whether the storage is a database server other processes share (it takes calls in parallel).
    shared: bool

    def publish(self, key: str) -> None:
        """Wake the waiters on ``key`` in the other processes (returns at once; sent in the background)."""

    async def run(self, wake: Callable[[str], None], wake_all: Callable[[], None]) -> None:
        """Call ``wake(key)`` for each key another process publishes, until cancelled; ``wake_all()`` when
        keys may have been missed (the channel was re-opened)."""

    async def close(self) -> None: ...


class SingleProcess:
    """The ``Cluster`` of a hub that runs alone."""

    shared = False

    def publish(self, key: str) -> None:
        """No other process to wake."""

    async def run(self, wake: Callable[[str], None], wake_all: Callable[[], None]) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        """Nothing held."""
