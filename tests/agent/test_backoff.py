"""The one retry policy: exponential, full jitter, capped, reset on success, cut short by stop."""

from __future__ import annotations

import asyncio
import random
import time

from pod_agent.agent.backoff import Backoff


def test_delays_grow_exponentially_within_full_jitter_and_stop_at_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, cap_s=1.0, rng=random.Random(7))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for ceiling in ceilings:
        assert 0.0 <= backoff.next_delay() <= ceiling
    many = [Backoff(initial_s=0.1, cap_s=1.0, rng=random.Random(i)) for i in range(200)]
    for b in many:
        b.failures = 10
    delays = [b.next_delay() for b in many]
    # Full jitter: spread over the whole [0, cap] range, not bunched at the cap.
    assert min(delays) < 0.2 and max(delays) > 0.8


def test_failures_go_on_forever_without_overflow() -> None:
    backoff = Backoff(initial_s=0.5, cap_s=60.0, rng=random.Random(1))
    for _ in range(10_000):
        assert backoff.next_delay() <= 60.0


def test_success_resets_the_delay() -> None:
    backoff = Backoff(initial_s=0.1, cap_s=10.0, rng=random.Random(3))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 0.1


async def test_wait_ends_early_when_stop_is_set() -> None:
    backoff = Backoff(initial_s=100.0, cap_s=100.0, rng=random.Random(0))
    backoff.failures = 3
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    await backoff.wait(stop)
    assert time.monotonic() - started < 1.0


async def test_wait_sleeps_its_whole_delay_while_stop_stays_clear() -> None:
    backoff = Backoff(initial_s=0.2, cap_s=0.2, rng=random.Random(5))
    delay = Backoff(initial_s=0.2, cap_s=0.2, rng=random.Random(5)).next_delay()  # the same draw
    started = time.monotonic()
    await backoff.wait(asyncio.Event())
    assert delay - 0.01 <= time.monotonic() - started < delay + 1.0
    assert backoff.failures == 1


async def test_the_first_failure_moving_to_another_hub_process_goes_at_once_and_the_next_waits() -> None:
    backoff = Backoff(initial_s=100.0, cap_s=100.0, rng=random.Random(0))
    stop = asyncio.Event()
    started = time.monotonic()
    await backoff.wait(stop, elsewhere=True)  # the link's process died: its pods try the other at once
    assert time.monotonic() - started < 1.0 and backoff.failures == 1
    # That try failed too: it waits now, even moving again (two processes down are not tried in a loop).
    asyncio.get_running_loop().call_later(0.3, stop.set)
    await backoff.wait(stop, elsewhere=True)
    assert time.monotonic() - started >= 0.3
    # A failure at the same process waits from the first.
    fresh = Backoff(initial_s=0.2, cap_s=0.2, rng=random.Random(5))
    delay = Backoff(initial_s=0.2, cap_s=0.2, rng=random.Random(5)).next_delay()
    started = time.monotonic()
    await fresh.wait(asyncio.Event())
    assert time.monotonic() - started >= delay - 0.01
