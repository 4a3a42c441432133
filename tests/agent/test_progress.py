"""Progress events are rate-limited per task; stage changes always pass."""

from __future__ import annotations

from pod_agent.agent.progress import ProgressLimiter
from pod_agent.protocol.messages import ProgressEvent

TASK = "00000000-0000-4000-8000-000000000000"


def _event(stage: str, step: int = 0, task_id: str = TASK) -> ProgressEvent:
    return ProgressEvent(task_id=task_id, stage=stage, step=step)  # type: ignore[arg-type]


def test_steps_within_the_interval_are_dropped_and_stage_changes_pass() -> None:
    limiter = ProgressLimiter(min_interval_s=1.0)
    assert limiter.admit(_event("training", 1), now=0.0)
    assert not limiter.admit(_event("training", 2), now=0.5)
    assert limiter.admit(_event("validating"), now=0.6)
    assert limiter.admit(_event("done"), now=0.61)
    assert limiter.admit(_event("done"), now=1.7)


def test_tasks_are_limited_independently() -> None:
    limiter = ProgressLimiter(min_interval_s=1.0)
    other = "11111111-1111-4111-8111-111111111111"
    assert limiter.admit(_event("training"), now=0.0)
    assert limiter.admit(_event("training", task_id=other), now=0.1)
    # Every quarter second for 10 s: one per second passes (at 1.0 ... 9.75), the first was already sent at 0.
    sent = sum(limiter.admit(_event("training", i), now=i * 0.25) for i in range(40))
    assert sent == 9
