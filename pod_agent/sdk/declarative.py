"""Style C: a model described as data (layers, optimizer, loss), built without running modeller code.

Owns parsing a spec and building it from the allow-lists in ``registry.py``.
A spec is JSON (or the same structure from TOML)::

    {"layers": [{"type": "Linear", "in_features": "input_size", "out_features": 64},
                {"type": "ReLU"},
                {"type": "Linear", "in_features": 64, "out_features": "n_classes"}],
     "optimizer": "AdamW", "loss": "CrossEntropy", "learning_rate": 0.001}

Layer arguments are integers, floats, booleans, lists of integers, or the symbols
``"input_size"`` and ``"n_classes"``, which take the datastructure's values.
``learning_rate`` is optional; without it the task's hyperparameter is used.
Targets are shaped for the loss: class indices for CrossEntropy/NLL; for MSE and
BCEWithLogits a one-hot float matrix when the output has ``n_classes`` columns, or
the class index / value as a float column when it has one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pod_agent.errors import TrainingError
from pod_agent.sdk.base import Batch, PodModel
from pod_agent.sdk.registry import LAYERS, LOSSES, OPTIMIZERS, make_optimizer

MAX_LAYERS = 64
_SYMBOLS = ("input_size", "n_classes")
LayerArg = int | float | bool | str | tuple[int, ...]


@dataclass(frozen=True)
class LayerSpec:
    type: str
    args: Mapping[str, LayerArg]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed, allow-list-checked declarative model."""

    layers: tuple[LayerSpec, ...]
    optimizer: str = "AdamW"
    loss: str = "CrossEntropy"
    learning_rate: float | None = None

    @classmethod
    def parse(cls, raw: object) -> ModelSpec:
        """Check ``raw`` against the allow-lists; raises TrainingError("bad_spec") naming the problem."""
        if not isinstance(raw, Mapping):
            raise _bad("a spec must be an object with 'layers', 'optimizer' and 'loss'")
        unknown = set(raw) - {"layers", "optimizer", "loss", "learning_rate"}
        if unknown:
            raise _bad(f"unknown spec keys {sorted(unknown)}; allowed: layers, optimizer, loss, learning_rate")
        layers_raw = raw.get("layers")
        if not isinstance(layers_raw, list) or not 1 <= len(layers_raw) <= MAX_LAYERS:
            raise _bad(f"'layers' must be a list of 1 to {MAX_LAYERS} layers")
        optimizer, loss = raw.get("optimizer", "AdamW"), raw.get("loss", "CrossEntropy")
        if optimizer not in OPTIMIZERS:
            raise _bad(f"optimizer {optimizer!r} is not allowed; use one of {sorted(OPTIMIZERS)}")
        if loss not in LOSSES:
            raise _bad(f"loss {loss!r} is not allowed; use one of {sorted(LOSSES)}")
        lr = raw.get("learning_rate")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
            raise _bad(f"learning_rate {lr!r} must be a positive number")
        return cls(
            layers=tuple(_parse_layer(i, layer) for i, layer in enumerate(layers_raw)),
            optimizer=str(optimizer),
            loss=str(loss),
            learning_rate=None if lr is None else float(lr),
        )

    def build(self, *, input_size: int, n_classes: int) -> nn.Sequential:
        """The ``nn.Sequential`` this spec describes, symbols resolved."""
        symbols = {"input_size": input_size, "n_classes": n_classes}
        modules: list[nn.Module] = []
        for i, layer in enumerate(self.layers):
            cls, _ = LAYERS[layer.type]
            args = {k: symbols[v] if isinstance(v, str) else v for k, v in layer.args.items()}
            try:
                modules.append(cls(**args))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise _bad(f"layer {i} ({layer.type}) rejects its arguments {dict(layer.args)}: {exc}") from exc
        return nn.Sequential(*modules)


def _bad(detail: str) -> TrainingError:
    return TrainingError("bad_spec", detail)


def _parse_layer(index: int, raw: object) -> LayerSpec:
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise _bad(f"layer {index} must be an object with a 'type'")
    kind = raw["type"]
    if kind not in LAYERS:
        raise _bad(f"layer {index}: type {kind!r} is not allowed; use one of {sorted(LAYERS)}")
    _, accepted = LAYERS[kind]
    args: dict[str, LayerArg] = {}
    for key, value in raw.items():
        if key == "type":
            continue
        if key not in accepted:
            raise _bad(f"layer {index} ({kind}): argument {key!r} is not allowed; allowed: {sorted(accepted)}")
        args[key] = _parse_arg(index, key, value)
    return LayerSpec(type=str(kind), args=args)


def _parse_arg(index: int, key: str, value: object) -> LayerArg:
    if isinstance(value, str):
        if value not in _SYMBOLS:
            raise _bad(f"layer {index}: {key}={value!r}; strings may only be {list(_SYMBOLS)}")
        return value
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise _bad(f"layer {index}: {key}={value!r} is not a number, boolean, integer list or symbol")


class DeclarativeModel(PodModel):
    """A ``PodModel`` built from a ``ModelSpec``; logs train/val/test loss and accuracy."""

    def __init__(self, *, spec: ModelSpec | Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
        self._loss = LOSSES[self.spec.loss]()

    def create_model(self) -> nn.Module:
        return self.spec.build(input_size=self.input_size, n_classes=self.n_classes)

    def _target_for_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.spec.loss in ("CrossEntropy", "NLL"):
            return y.long()
        if self.datastructure.task == "classification" and outputs.ndim == 2 and outputs.shape[1] == self.n_classes > 1:
            return F.one_hot(y.long(), self.n_classes).to(outputs.dtype)
        return y.to(outputs.dtype).reshape(outputs.shape)

    def _loss_of(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self._loss(outputs, self._target_for_loss(outputs, y))
        return loss

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs as the values a predict task returns (probabilities for classifiers)."""
        if self.spec.loss == "CrossEntropy":
            return outputs.softmax(dim=1)
        if self.spec.loss == "NLL":
            return outputs.exp()
        if self.spec.loss == "BCEWithLogits":
            return outputs.sigmoid()
        return outputs

    def _log_accuracy(self, name: str, outputs: torch.Tensor, y: torch.Tensor) -> None:
        if self.datastructure.task != "classification" or outputs.ndim != 2:
            return
        if outputs.shape[1] == 1:
            predicted = (outputs[:, 0] > (0.0 if self.spec.loss == "BCEWithLogits" else 0.5)).long()
        else:
            predicted = outputs.argmax(dim=1)
        self.log(name, (predicted == y).float().mean())

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss_of(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        outputs = self(x)
        self.log("val_loss", self._loss_of(outputs, y))
        self._log_accuracy("val_accuracy", outputs, y)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        outputs = self(x)
        self.log("test_loss", self._loss_of(outputs, y))
        self._log_accuracy("test_accuracy", outputs, y)
        return {"predictions": self.predictions(outputs), "targets": y}

    def configure_optimizers(self) -> Any:
        lr = self.spec.learning_rate if self.spec.learning_rate is not None else self.learning_rate
        return make_optimizer(self.spec.optimizer, self.parameters(), lr=lr)
