"""The allow-lists: which layers, optimizers and losses a task may name without sending code.

Owns the mapping from names in a task (style B's optimizer, style C's whole spec)
to torch classes, and each layer's accepted arguments. Anything not listed here
is refused; nothing is looked up by ``getattr`` on a name from a task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from pod_agent.errors import TrainingError

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "SGD": torch.optim.SGD,
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "Adadelta": torch.optim.Adadelta,
}

LOSSES: dict[str, type[nn.Module]] = {
    "CrossEntropy": nn.CrossEntropyLoss,
    "NLL": nn.NLLLoss,
    "MSE": nn.MSELoss,
    "BCEWithLogits": nn.BCEWithLogitsLoss,
}

# Layer name -> (class, accepted keyword arguments). Arguments are plain numbers,
# booleans or int lists, or the symbols "input_size" / "n_classes".
LAYERS: dict[str, tuple[type[nn.Module], frozenset[str]]] = {
    "Linear": (nn.Linear, frozenset({"in_features", "out_features", "bias"})),
    "Conv1d": (nn.Conv1d, frozenset({"in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"})),
    "Conv2d": (nn.Conv2d, frozenset({"in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"})),
    "ReLU": (nn.ReLU, frozenset()),
    "GELU": (nn.GELU, frozenset()),
    "Dropout": (nn.Dropout, frozenset({"p"})),
    "BatchNorm1d": (nn.BatchNorm1d, frozenset({"num_features", "eps", "momentum"})),
    "BatchNorm2d": (nn.BatchNorm2d, frozenset({"num_features", "eps", "momentum"})),
    "LayerNorm": (nn.LayerNorm, frozenset({"normalized_shape", "eps"})),
    "Flatten": (nn.Flatten, frozenset({"start_dim", "end_dim"})),
    "MaxPool1d": (nn.MaxPool1d, frozenset({"kernel_size", "stride", "padding"})),
    "MaxPool2d": (nn.MaxPool2d, frozenset({"kernel_size", "stride", "padding"})),
    "Embedding": (nn.Embedding, frozenset({"num_embeddings", "embedding_dim"})),
    "LogSoftmax": (nn.LogSoftmax, frozenset({"dim"})),
    "Softmax": (nn.Softmax, frozenset({"dim"})),
}


def make_optimizer(name: str, params: Iterable[nn.Parameter], *, lr: float) -> torch.optim.Optimizer:
    """The allow-listed optimizer ``name``; raises TrainingError("bad_optimizer") otherwise."""
    if name not in OPTIMIZERS:
        raise TrainingError("bad_optimizer", f"optimizer {name!r} is not allowed; use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr)
