"""Rate limiting of progress events from running tasks to the hub.

Owns the rule: a stage change always passes; within a stage, at most one event
per ``PROGRESS_MIN_INTERVAL_S`` per task (a training loop may report every step).
Sending is the daemon's; dropped events are simply not sent.
"""

from __future__ import annotations

from pod_agent.protocol import ProgressEvent

# The hub shows progress to people; one update a second per task is plenty.
PROGRESS_MIN_INTERVAL_S = 1.0
# Forget tasks not heard from for this long (bounds the table).
_FORGET_AFTER_S = 3600.0


class ProgressLimiter:
    def __init__(self, *, min_interval_s: float = PROGRESS_MIN_INTERVAL_S) -> None:
        self._min_interval_s = min_interval_s
        self._last: dict[str, tuple[str, float]] = {}

    def admit(self, event: ProgressEvent, *, now: float) -> bool:
        """True when ``event`` should be sent now (and record it as sent)."""
        previous = self._last.get(event.task_id)
        if previous is not None and previous[0] == event.stage and now - previous[1] < self._min_interval_s:
            return False
        self._last[event.task_id] = (event.stage, now)
        if len(self._last) > 1000:
            self._last = {k: v for k, v in self._last.items() if now - v[1] < _FORGET_AFTER_S}
        return True
