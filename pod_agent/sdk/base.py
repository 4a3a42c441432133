"""Style A: the Lightning base class a modeller's model subclasses, and the classifier mixin.

Owns the hooks a model source sees: ``datastructure`` and ``schema`` attributes,
``input_size`` and ``n_classes``, ``create_model()`` whose result becomes
``self._model``, and default ``forward`` / ``configure_optimizers``. A model ported
from platforms with the same shape (``PyTorchBitfountModel`` with
``PyTorchClassifierMixIn``) works after changing imports and base-class names only.

Batches are ``(x, y)`` with ``x = (tabular, support)``: ``tabular`` a float32
``[batch, input_size]`` tensor, ``support`` a ``[batch, 0]`` tensor (no support
columns yet), ``y`` int64 class indices (float32 for regression). Building the data
and running the Trainer is ``pod_agent.training``'s job, not the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional import accuracy

from pod_agent.errors import TrainingError
from pod_agent.sdk.datastructure import Datastructure

Batch = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]


class PodModel(pl.LightningModule):
    """Base of every model a pod trains; subclass it and implement ``create_model``.

    Keyword arguments are the task's hyperparameters (``epochs``, ``steps``,
    ``batch_size``, ``learning_rate`` and any extra); unknown ones are kept in
    ``self.hyperparameters`` so a ported ``__init__(self, **kwargs)`` keeps working.
    """

    def __init__(
        self,
        *,
        datastructure: Datastructure | Mapping[str, object],
        schema: Mapping[str, object] | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        **hyperparameters: object,
    ) -> None:
        super().__init__()
        self.datastructure = Datastructure.coerce(datastructure)
        self.schema: Mapping[str, object] = dict(schema or {})
        self.input_size: int = self.datastructure.input_size
        self.n_classes: int = self.datastructure.n_classes
        self.epochs, self.steps = epochs, steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.hyperparameters: dict[str, object] = dict(hyperparameters)
        self._model: nn.Module | None = None

    def create_model(self) -> nn.Module:
        """Return the network; it becomes ``self._model``. Subclasses must implement it."""
        raise TrainingError("create_model_missing", f"{type(self).__name__} does not implement create_model()")

    def initialise_model(self) -> None:
        """Build ``self._model`` from ``create_model()``; called once before training."""
        model = self.create_model()
        if not isinstance(model, nn.Module):
            raise TrainingError(
                "create_model_wrong_type",
                f"{type(self).__name__}.create_model() returned {type(model).__name__}, not a torch.nn.Module",
            )
        self._model = model

    def forward(self, x: Any) -> Any:
        x, _support = x
        if self._model is None:
            raise TrainingError("model_not_initialised", "call initialise_model() before forward()")
        return self._model(x)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate)


class PodClassifierMixin:
    """Cross-entropy training and accuracy metrics for classifiers; put it before ``PodModel``.

    Logs ``train_loss``, ``val_loss``, ``val_accuracy``, ``test_loss`` and
    ``test_accuracy``; ``test_step`` returns ``{"predictions": softmax, "targets": y}``.
    ``self.preds`` and ``self.targs`` are lists a ported ``test_step`` may extend.
    """

    n_classes: int

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preds: list[list[float]] = []
        self.targs: list[int] = []

    def _accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.n_classes < 2:
            raise TrainingError("bad_datastructure", "a classifier needs at least 2 target classes")
        return accuracy(logits.softmax(dim=1), y, task="multiclass", num_classes=self.n_classes)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)  # type: ignore[operator]
        self.log("train_loss", loss)  # type: ignore[attr-defined]
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)  # type: ignore[operator]
        loss = F.cross_entropy(logits, y)
        acc = self._accuracy(logits, y)
        self.log("val_loss", loss)  # type: ignore[attr-defined]
        self.log("val_accuracy", acc)  # type: ignore[attr-defined]
        return {"val_loss": loss, "val_accuracy": acc}

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)  # type: ignore[operator]
        self.log("test_loss", F.cross_entropy(logits, y))  # type: ignore[attr-defined]
        self.log("test_accuracy", self._accuracy(logits, y))  # type: ignore[attr-defined]
        return {"predictions": logits.softmax(dim=1), "targets": y}
