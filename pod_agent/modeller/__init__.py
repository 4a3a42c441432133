"""Modeller side: sign tasks, send them through the hub, collect and verify the pods' results.

``ModellerClient`` is the async API (also what notebooks use); ``build_task`` and
``model_from_file`` make task payloads; ``run_sync`` runs a coroutine from plain
Python for a notebook cell or script.

Names resolve lazily, so that a command needing only ``load_pod_keys`` or ``build_task``
(``pod-agent keys show``) does not pay for the client's aiohttp import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pod_agent.modeller.client import HubTaskStatus, ModellerClient, PodInfo, VerifiedResult
    from pod_agent.modeller.notebook import run_sync, schema_stats
    from pod_agent.modeller.pinning import load_pod_keys
    from pod_agent.modeller.tasks import DEFAULT_TASK_LIFETIME_S, build_task
    from pod_agent.protocol import model_from_file

_HOME = {
    "DEFAULT_TASK_LIFETIME_S": "pod_agent.modeller.tasks",
    "HubTaskStatus": "pod_agent.modeller.client",
    "ModellerClient": "pod_agent.modeller.client",
    "PodInfo": "pod_agent.modeller.client",
    "VerifiedResult": "pod_agent.modeller.client",
    "build_task": "pod_agent.modeller.tasks",
    "load_pod_keys": "pod_agent.modeller.pinning",
    "model_from_file": "pod_agent.protocol",  # the one builder, shared with a local fit
    "run_sync": "pod_agent.modeller.notebook",
    "schema_stats": "pod_agent.modeller.notebook",
}

__all__ = [
    "DEFAULT_TASK_LIFETIME_S",
    "HubTaskStatus",
    "ModellerClient",
    "PodInfo",
    "VerifiedResult",
    "build_task",
    "load_pod_keys",
    "model_from_file",
    "run_sync",
    "schema_stats",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'pod_agent.modeller' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
