"""Which of a model's tensors travel, and their safetensors encoding.

Owns the exchanged set: every *floating* entry of ``model.state_dict()``
(parameters and floating buffers such as BatchNorm's running mean and variance),
sent as float32. Integer buffers (BatchNorm's ``num_batches_tracked``) are never
sent: they are bookkeeping, not learnt values, cannot be averaged meaningfully and
cannot go through secure aggregation. Inside the sandbox each task starts them from
the pretrained file when it has them, else from the freshly built model (0); they
only matter for BatchNorm with ``momentum=None``. Pretrained files are loaded with
``safetensors`` only (never ``torch.load``), and their names and shapes must match.

With ``exchange = "trainable"`` (``Hyperparameters.exchange``) the exchanged set is only the
parameters that require gradients, e.g. a ``peft`` model's LoRA adapters: the frozen base is the
one every pod builds from the task's seed, and pinned weights, update and masked vector hold the
adapters alone. ``wire_dtype`` (``Hyperparameters.wire_dtype``) is the dtype the result travels in;
differences are computed in float32 first.
"""

from __future__ import annotations

from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from pod_agent.errors import TrainingError
from pod_agent.training.wall import TensorDescription

WIRE_DTYPE = torch.float32
WIRE_DTYPE_NAME = "F32"
Exchange = Literal["all", "trainable"]
WireDtype = Literal["float32", "bfloat16", "float16"]
# The task's wire dtype as torch makes it and as the safetensors header names it.
_WIRE_DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "F32"), "bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16"),
}


def exchanged_names(model: nn.Module, exchange: Exchange = "all") -> set[str]:
    """The state entries that travel: floating ones, or (``trainable``) the parameters that require gradients."""
    if exchange == "trainable":
        return {name for name, p in model.named_parameters() if p.requires_grad}
    return {name for name, t in model.state_dict().items() if torch.is_floating_point(t)}


def exchanged_state(model: nn.Module, exchange: Exchange = "all") -> dict[str, torch.Tensor]:
    """The exchanged entries (``exchanged_names``), detached, on CPU, as float32 copies."""
    names = exchanged_names(model, exchange)
    return {name: t.detach().to("cpu", WIRE_DTYPE).clone() for name, t in model.state_dict().items() if name in names}


def encode(
    tensors: dict[str, torch.Tensor], wire_dtype: WireDtype = "float32"
) -> tuple[dict[str, TensorDescription], bytes]:
    """The header's ``tensors`` description and the safetensors payload, in ``wire_dtype``."""
    dtype, dtype_name = _WIRE_DTYPES[wire_dtype]
    contiguous = {name: t.to(dtype).contiguous() for name, t in sorted(tensors.items())}
    described = {
        name: TensorDescription(shape=list(t.shape), dtype=dtype_name) for name, t in contiguous.items()
    }
    return described, save_safetensors(contiguous) if contiguous else b""


def load_pretrained(model: nn.Module, blob: bytes, exchange: Exchange = "all") -> None:
    """Load ``blob`` (safetensors) into ``model``: every exchanged entry (``exchanged_names``) must be
    present with its shape; integer buffers may be present (``all`` only); nothing else may be."""
    try:
        loaded = load_safetensors(blob)
    except (SafetensorError, ValueError) as exc:
        raise TrainingError("weights_invalid", f"pretrained file is not readable safetensors: {exc}") from exc
    state = model.state_dict()
    floating = exchanged_names(model, exchange)
    allowed = state.keys() if exchange == "all" else floating
    missing, unexpected = floating - loaded.keys(), loaded.keys() - allowed
    if missing or unexpected:
        raise TrainingError(
            "weights_mismatch",
            f"pretrained names differ from the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}",
        )
    for name, tensor in loaded.items():
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise TrainingError(
                "weights_mismatch",
                f"pretrained {name} has shape {list(tensor.shape)}, the model needs {list(state[name].shape)}",
            )
        if torch.is_floating_point(tensor) != torch.is_floating_point(state[name]):
            raise TrainingError(
                "weights_mismatch", f"pretrained {name} has dtype {tensor.dtype}, the model {state[name].dtype}"
            )
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            raise TrainingError("weights_invalid", f"pretrained {name} holds non-finite values")
    with torch.no_grad():
        for name, tensor in loaded.items():
            state[name].copy_(tensor.to(state[name].dtype))
