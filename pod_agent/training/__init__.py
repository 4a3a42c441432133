"""Training: the sandboxed worker (``worker.py``, inside) and the agent's check of its output.

``contract`` (the agent's check) and ``wall`` (the typed request, result header and
progress that cross the sandbox wall) are torch-free and are what the agent imports;
``worker``, ``engine``, ``loading``, ``dataset``, ``tensors`` and ``local`` import torch
and run inside the sandbox or on a modeller's machine. Nothing torch-heavy is imported here.
"""

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
    "parse_progress",
    "reported_rows",
    "safetensors_head",
]
