"""The privacy budget gauges on /metrics: epsilon charged and left per budget."""

from __future__ import annotations

from pod_agent.ops.metrics import AgentMetrics


def test_epsilon_spent_and_left_are_exposed_per_budget() -> None:
    metrics = AgentMetrics()
    metrics.set_epsilon("modeller alice", spent=1.88, left=0.62)
    text = metrics.render().decode()
    assert 'pod_agent_dp_epsilon_spent{budget="modeller alice"} 1.88' in text
    assert 'pod_agent_dp_epsilon_left{budget="modeller alice"} 0.62' in text
