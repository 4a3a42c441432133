"""Per-agent metrics: names, labels and values in the Prometheus text."""

from __future__ import annotations

import math

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pod_agent.ops import AgentMetrics


def _samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_tasks_are_counted_by_kind_and_outcome_with_durations() -> None:
    metrics = AgentMetrics()
    metrics.task_finished("train", "done", 3.0)
    metrics.task_finished("train", "done", 40.0)
    metrics.task_finished("evaluate", "failed", 0.2)
    s = _samples(metrics)
    assert s[("pod_agent_tasks_total", (("kind", "train"), ("outcome", "done")))] == 2
    assert s[("pod_agent_tasks_total", (("kind", "evaluate"), ("outcome", "failed")))] == 1
    assert s[("pod_agent_task_duration_seconds_sum", (("kind", "train"),))] == 43.0
    assert s[("pod_agent_task_duration_seconds_bucket", (("kind", "train"), ("le", "5.0")))] == 1


def test_refusals_reconnects_outbox_and_sandbox_level_are_exported() -> None:
    metrics = AgentMetrics()
    metrics.refused("bad_signature")
    metrics.refused("bad_signature")
    metrics.refused("expired")
    metrics.reconnected()
    metrics.set_outbox_depth(4)
    metrics.set_sandbox_level("strict")
    metrics.set_sandbox_level("standard")
    s = _samples(metrics)
    assert s[("pod_agent_refusals_total", (("reason", "bad_signature"),))] == 2
    assert s[("pod_agent_refusals_total", (("reason", "expired"),))] == 1
    assert s[("pod_agent_hub_reconnects_total", ())] == 1
    assert s[("pod_agent_outbox_depth", ())] == 4
    assert s[("pod_agent_sandbox_level", (("level", "standard"),))] == 1
    assert s[("pod_agent_sandbox_level", (("level", "strict"),))] == 0


def test_heartbeat_age_is_nan_until_the_first_then_grows_with_the_clock() -> None:
    now = [100.0]
    metrics = AgentMetrics(clock=lambda: now[0])
    assert math.isnan(_samples(metrics)[("pod_agent_last_heartbeat_age_seconds", ())])
    metrics.heartbeat()
    now[0] = 107.5
    assert _samples(metrics)[("pod_agent_last_heartbeat_age_seconds", ())] == 7.5


def test_two_agents_in_one_process_keep_separate_registries() -> None:
    first, second = AgentMetrics(), AgentMetrics()
    first.reconnected()
    assert _samples(second)[("pod_agent_hub_reconnects_total", ())] == 0
    assert not any(name.startswith("pod_agent_") for name in REGISTRY._names_to_collectors)
