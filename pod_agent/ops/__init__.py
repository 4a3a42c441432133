"""Operations: logs, sd_notify, health/readiness/metrics endpoint.

The daemon (pod_agent.agent) owns when things happen; this package owns how
they are reported on this host. Nothing here sends anything off the host.
"""

from pod_agent.ops.health import HealthPortTaken, HealthServer, Readiness, bind_health_socket, pod_on_health_port
from pod_agent.ops.logs import (
    HumanFormatter,
    JsonFormatter,
    TaskLogAdapter,
    configure_logging,
    task_context,
    task_logger,
)
from pod_agent.ops.metrics import AgentMetrics
from pod_agent.ops.notify import Notifier

__all__ = [
    "AgentMetrics",
    "HealthPortTaken",
    "HealthServer",
    "HumanFormatter",
    "JsonFormatter",
    "Notifier",
    "Readiness",
    "TaskLogAdapter",
    "bind_health_socket",
    "configure_logging",
    "pod_on_health_port",
    "task_context",
    "task_logger",
]
