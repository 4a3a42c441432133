"""Modeller side: sign tasks, send them through the hub, collect and verify the pods' results.

``ModellerClient`` is the async API (also what notebooks use); ``build_task`` and
``model_from_file`` make task payloads; ``run_sync`` runs a coroutine from plain
Python for a notebook cell or script.

Names resolve lazily, so that a command needing only ``load_pod_keys`` or ``build_task``
(``pod-agent keys show``) does not pay for the client's aiohttp import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pod_agent.lazy import lazy_attributes

if TYPE_CHECKING:
    from pod_agent.modeller.client import SEE_POD_LIST, HubTaskStatus, ModellerClient, PodInfo, VerifiedResult
    from pod_agent.modeller.fedavg import DpTarget, FedAvg, FedAvgPlan, SecureSettings
    from pod_agent.modeller.notebook import run_sync, schema_stats
    from pod_agent.modeller.pinning import load_pod_keys, pin_line
    from pod_agent.modeller.report import PodMetrics, RoundRecord, RunReport
    from pod_agent.modeller.results import UNKNOWN_TRAIN_BLOB, PodAnswer, results_table, save_results
    from pod_agent.modeller.strategies import STRATEGIES, Strategy, strategy_named
    from pod_agent.modeller.tasks import DEFAULT_TASK_LIFETIME_S, build_task, load_task_record, save_task_record
    from pod_agent.modeller.weights import starting_weights
    from pod_agent.protocol import model_from_file

_HOME = {
    "DEFAULT_TASK_LIFETIME_S": "pod_agent.modeller.tasks",
    "SEE_POD_LIST": "pod_agent.modeller.client",
    "STRATEGIES": "pod_agent.modeller.strategies",
    "UNKNOWN_TRAIN_BLOB": "pod_agent.modeller.results",
    "DpTarget": "pod_agent.modeller.fedavg",
    "FedAvg": "pod_agent.modeller.fedavg",
    "FedAvgPlan": "pod_agent.modeller.fedavg",
    "HubTaskStatus": "pod_agent.modeller.client",
    "ModellerClient": "pod_agent.modeller.client",
    "PodAnswer": "pod_agent.modeller.results",
    "PodInfo": "pod_agent.modeller.client",
    "PodMetrics": "pod_agent.modeller.report",
    "RoundRecord": "pod_agent.modeller.report",
    "RunReport": "pod_agent.modeller.report",
    "SecureSettings": "pod_agent.modeller.fedavg",
    "Strategy": "pod_agent.modeller.strategies",
    "VerifiedResult": "pod_agent.modeller.client",
    "build_task": "pod_agent.modeller.tasks",
    "load_pod_keys": "pod_agent.modeller.pinning",
    "load_task_record": "pod_agent.modeller.tasks",
    "model_from_file": "pod_agent.protocol",  # the one builder, shared with a local fit
    "pin_line": "pod_agent.modeller.pinning",
    "results_table": "pod_agent.modeller.results",
    "run_sync": "pod_agent.modeller.notebook",
    "save_results": "pod_agent.modeller.results",
    "save_task_record": "pod_agent.modeller.tasks",
    "schema_stats": "pod_agent.modeller.notebook",
    "starting_weights": "pod_agent.modeller.weights",
    "strategy_named": "pod_agent.modeller.strategies",
}

__all__ = [
    "DEFAULT_TASK_LIFETIME_S",
    "SEE_POD_LIST",
    "STRATEGIES",
    "UNKNOWN_TRAIN_BLOB",
    "DpTarget",
    "FedAvg",
    "FedAvgPlan",
    "HubTaskStatus",
    "ModellerClient",
    "PodAnswer",
    "PodInfo",
    "PodMetrics",
    "RoundRecord",
    "RunReport",
    "SecureSettings",
    "Strategy",
    "VerifiedResult",
    "build_task",
    "load_pod_keys",
    "load_task_record",
    "model_from_file",
    "pin_line",
    "results_table",
    "run_sync",
    "save_results",
    "save_task_record",
    "schema_stats",
    "starting_weights",
    "strategy_named",
]


__getattr__ = lazy_attributes(__name__, _HOME)
