"""Modeller side: sign tasks, send them through the hub, collect and verify the pods' results.

``ModellerClient`` is the async API (also what notebooks use); ``build_task`` and
``model_from_file`` make task payloads; ``run_sync`` runs a coroutine from plain
Python for a notebook cell or script.
"""

from pod_agent.modeller.client import ModellerClient, PodInfo, TaskStatus, VerifiedResult
from pod_agent.modeller.notebook import run_sync, schema_stats
from pod_agent.modeller.pinning import load_pod_keys
from pod_agent.modeller.tasks import DEFAULT_TASK_LIFETIME_S, build_task, model_from_file

__all__ = [
    "DEFAULT_TASK_LIFETIME_S",
    "ModellerClient",
    "PodInfo",
    "TaskStatus",
    "VerifiedResult",
    "build_task",
    "load_pod_keys",
    "model_from_file",
    "run_sync",
    "schema_stats",
]
