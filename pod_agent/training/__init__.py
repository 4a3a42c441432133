"""Training: the sandboxed worker (``worker.py``, inside) and the agent's check of its output.

``contract`` is torch-free and is what the agent imports; ``worker``, ``engine``,
``loading``, ``dataset``, ``tensors`` and ``local`` import torch and run inside the
sandbox or on a modeller's machine. Nothing torch-heavy is imported here.
"""

from pod_agent.training.contract import (
    CheckedResult,
    TensorSpec,
    check_result,
    expected_from_safetensors,
    logged_metric_names,
)

__all__ = ["CheckedResult", "TensorSpec", "check_result", "expected_from_safetensors", "logged_metric_names"]
