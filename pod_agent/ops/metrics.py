"""Prometheus metrics of one agent, in a registry of its own.

Owns the metric names and the small API the daemon calls when something
happens (a task ends, a task is refused, the hub link reconnects, a heartbeat
is acknowledged, the outbox changes, the sandbox level is probed, a privacy budget
is charged). Rendering
over HTTP is health.py's job. Nothing here is sent anywhere: the registry is
only read by whoever scrapes /metrics on this host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)

from pod_agent import __version__

# Task durations run from a sub-second refusal to hours of training.
TASK_DURATION_BUCKETS_S: tuple[float, ...] = (
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class AgentMetrics:
    """Counters and gauges of one agent; each instance has its own registry (no global state)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        Info("pod_agent_build", "pod-agent version", registry=r).info({"version": __version__})
        self._tasks = Counter(
            "pod_agent_tasks", "Tasks finished, by kind and outcome", ["kind", "outcome"], registry=r
        )
        self._duration = Histogram(
            "pod_agent_task_duration_seconds",
            "Wall time from task accepted to result queued, by kind",
            ["kind"],
            buckets=TASK_DURATION_BUCKETS_S,
            registry=r,
        )
        self._refusals = Counter(
            "pod_agent_refusals", "Tasks refused by the pod's policy, by refusal code", ["reason"], registry=r
        )
        self._reconnects = Counter("pod_agent_hub_reconnects", "Times the hub link was re-established", registry=r)
        self._last_heartbeat: float | None = None
        heartbeat_age = Gauge(
            "pod_agent_last_heartbeat_age_seconds",
            "Seconds since the hub last acknowledged a heartbeat (NaN before the first)",
            registry=r,
        )
        heartbeat_age.set_function(self.heartbeat_age_s)
        self._sandbox = Gauge(
            "pod_agent_sandbox_level", "Sandbox level reached on this host (1 = current level)", ["level"], registry=r
        )
        self._outbox = Gauge("pod_agent_outbox_depth", "Results waiting for the hub's acknowledgement", registry=r)
        self._loop_lag = Gauge(
            "pod_agent_event_loop_lag_seconds", "Latest measured delay of the agent's event loop", registry=r
        )
        self._sandbox_levels: set[str] = set()
        self._epsilon = Gauge(
            "pod_agent_dp_epsilon_spent",
            "Differential-privacy epsilon charged to each budget (modeller NAME or dataset HASH16), at its delta",
            ["budget"], registry=r,
        )
        self._epsilon_left = Gauge(
            "pod_agent_dp_epsilon_left", "Epsilon left of each budget after charged and reserved releases",
            ["budget"], registry=r,
        )

    def task_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """Count one finished task (outcome e.g. "done", "failed", "refused") and record its duration."""
        self._tasks.labels(kind=kind, outcome=outcome).inc()
        self._duration.labels(kind=kind).observe(max(0.0, seconds))

    def refused(self, code: str) -> None:
        """Count one refusal; ``code`` is the RefusalCode value sent to the hub."""
        self._refusals.labels(reason=code).inc()

    def reconnected(self) -> None:
        self._reconnects.inc()

    def heartbeat(self) -> None:
        """The hub acknowledged a heartbeat just now."""
        self._last_heartbeat = self._clock()

    def heartbeat_age_s(self) -> float:
        if self._last_heartbeat is None:
            return math.nan
        return self._clock() - self._last_heartbeat

    def set_outbox_depth(self, n: int) -> None:
        self._outbox.set(n)

    def set_sandbox_level(self, level: str) -> None:
        """Mark ``level`` (e.g. "strict", "standard", "none") as the one in force."""
        self._sandbox_levels.add(level)
        for name in self._sandbox_levels:
            self._sandbox.labels(level=name).set(1 if name == level else 0)

    def set_epsilon(self, budget: str, *, spent: float, left: float) -> None:
        """One privacy budget's epsilon charged so far and left (``policy.budget_report``)."""
        self._epsilon.labels(budget=budget).set(spent)
        self._epsilon_left.labels(budget=budget).set(left)

    def set_loop_lag(self, seconds: float) -> None:
        self._loop_lag.set(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


__all__ = ["METRICS_CONTENT_TYPE", "TASK_DURATION_BUCKETS_S", "AgentMetrics"]
