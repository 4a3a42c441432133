"""The demo's AdultMLP (pod_agent/demo/adult_mlp.py) as a plain torch module, and its data."""

import numpy as np
import torch
from torch import nn


def build(input_size: int, n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_size, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, n_classes))


def load(path: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pod's prepared rows of ``split``: the pod's own encoding, written by bench/rounds.py."""
    with np.load(path) as data:
        return torch.from_numpy(data[f"x_{split}"]).float(), torch.from_numpy(data[f"y_{split}"]).long()
