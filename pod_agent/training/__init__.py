"""Training: the sandboxed worker (``worker.py``, inside) and the agent's check of its output.

``contract`` (the agent's check) and ``wall`` (the typed request, result header and
progress that cross the sandbox wall) are torch-free and are what the agent imports;
``worker``, ``engine``, ``loading``, ``dataset``, ``tensors`` and ``local`` import torch
and run inside the sandbox or on a modeller's machine. Nothing torch-heavy is imported here:
the local fit's names (``local``) resolve lazily, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pod_agent.lazy import lazy_attributes
from pod_agent.training.contract import (
    CheckedResult,
    TensorSpec,
    check_result,
    expected_from_safetensors,
    reported_rows,
    safetensors_head,
)
from pod_agent.training.wall import (
    TensorDescription,
    TrainerSettings,
    WorkerPrivacy,
    WorkerProgress,
    WorkerRequest,
    WorkerResultHeader,
    parse_progress,
)

if TYPE_CHECKING:
    from pod_agent.training.local import fit_local, initial_weights, save_fit

_LAZY_HOME = {
    "fit_local": "pod_agent.training.local",
    "initial_weights": "pod_agent.training.local",
    "save_fit": "pod_agent.training.local",
}

__all__ = [
    "CheckedResult",
    "TensorDescription",
    "TensorSpec",
    "TrainerSettings",
    "WorkerPrivacy",
    "WorkerProgress",
    "WorkerRequest",
    "WorkerResultHeader",
    "check_result",
    "expected_from_safetensors",
    "fit_local",
    "initial_weights",
    "parse_progress",
    "reported_rows",
    "safetensors_head",
    "save_fit",
]


__getattr__ = lazy_attributes(__name__, _LAZY_HOME)
