"""The daemon: hub link, task intake, runner, outbox (``pod-agent run``).

``run_agent(settings)`` runs it; ``TaskPipeline`` is the one place a task is
executed; ``Backoff`` is the one retry policy.
"""

from pod_agent.agent.backoff import Backoff
from pod_agent.agent.daemon import Agent, run_agent
from pod_agent.agent.hubclient import HubClient
from pod_agent.agent.pipeline import PipelineOutput, TaskPipeline

__all__ = [
    "Agent",
    "Backoff",
    "HubClient",
    "PipelineOutput",
    "TaskPipeline",
    "run_agent",
]
