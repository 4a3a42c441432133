"""Training: the sandboxed worker (``worker.py``, inside) and the agent's check of its output.

``contract`` (the agent's check), ``control`` (SCAFFOLD's control-variate arithmetic, done by
the agent) and ``wall`` (the typed request, result header and progress that cross the sandbox
wall) are torch-free and are what the agent imports; ``correction`` (FedProx's term and
SCAFFOLD's correction, applied by the engine), ``ranks`` (the engine's data-parallel ranks),
``worker``, ``engine``, ``loading``, ``dataset``, ``tensors`` and ``local`` import torch and
run inside the sandbox or on a modeller's machine. Nothing torch-heavy is imported here: the
local fit's names (``local``) resolve lazily, on first use.
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
from pod_agent.training.control import (
    CONTROL_PREFIX,
    CORRECTION_FILE_NAME,
    ControlStep,
    control_correction,
    control_step,
    tagged,
    untagged,
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
    "CONTROL_PREFIX",
    "CORRECTION_FILE_NAME",
    "CheckedResult",
    "ControlStep",
    "TensorDescription",
    "TensorSpec",
    "TrainerSettings",
    "WorkerPrivacy",
    "WorkerProgress",
    "WorkerRequest",
    "WorkerResultHeader",
    "check_result",
    "control_correction",
    "control_step",
    "expected_from_safetensors",
    "fit_local",
    "initial_weights",
    "parse_progress",
    "reported_rows",
    "safetensors_head",
    "save_fit",
    "tagged",
    "untagged",
]


__getattr__ = lazy_attributes(__name__, _LAZY_HOME)
