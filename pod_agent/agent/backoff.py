"""The one retry policy of the daemon: exponential backoff with full jitter, capped, forever.

Every loop that talks to the hub (link, outbox) retries through ``Backoff``: the
n-th consecutive failure waits a uniform random time in [0, min(cap, initial * 2**n)]
("full jitter", so a fleet of pods does not reconnect in step after a hub restart).
A success resets it. Which exceptions count as retryable is the caller's list of
types (``RETRYABLE``), never a match on message text.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

import aiohttp

from pod_agent.errors import HubError

# Failures that a later attempt may not meet: the hub or the network was down or broken.
RETRYABLE: tuple[type[BaseException], ...] = (HubError, aiohttp.ClientError, OSError, TimeoutError)


@dataclass
class Backoff:
    initial_s: float
    cap_s: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """Count a failure and return how long to wait before the next attempt."""
        ceiling = min(self.cap_s, self.initial_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, stop: asyncio.Event, *, elsewhere: bool = False) -> None:
        """Sleep the next delay, or less if ``stop`` is set meanwhile.

        ``elsewhere``: the next try goes to another process of the hub than the one that failed. The first
        failure since a success then does not wait (it still counts, so a try that fails there waits): the
        jitter spares a failed process a herd when it comes back, and the other process did not fail. The
        herd that reaches it instead is the moved pods' reconnections, which the hub's accept queue holds
        (``hub.serving.LISTEN_BACKLOG``)."""
        if elsewhere and self.failures == 0:
            self.failures = 1
            return
        # A timeout around the wait itself, not wait_for's task around it: thousands of pods of a failed hub
        # process wait here at once, and the task was most of the wait's CPU.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.next_delay()):
                await stop.wait()
