"""Style B: train a plain ``nn.Module`` whose ``forward(inputs, labels=None)`` returns a dict.

Owns the adapter that makes such a module a ``PodModel``: the module returns
``{"loss": scalar, "outputs": tensor}`` (``loss`` when labels are given), the adapter
logs ``train_loss`` / ``val_loss`` (plus ``val_accuracy`` / ``test_accuracy`` for
classification) and builds the optimizer named by the hyperparameter ``optimizer``
(default AdamW, allow-list in ``registry.py``) with the task's learning rate.
The module is constructed with whichever of ``input_size``, ``n_classes`` and
``datastructure`` its ``__init__`` accepts.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torchmetrics.functional import accuracy

from pod_agent.errors import TrainingError
from pod_agent.sdk.base import Batch, PodModel
from pod_agent.sdk.registry import make_optimizer

_CONSTRUCTOR_ARGS = ("input_size", "n_classes", "datastructure")


class ModuleAdapter(PodModel):
    """Wraps ``module_class`` (an ``nn.Module`` returning a dict) as a Lightning model."""

    def __init__(self, *, module_class: type[nn.Module], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
            raise TrainingError("wrong_base_class", f"{module_class!r} is not a torch.nn.Module subclass")
        self._module_class = module_class

    def create_model(self) -> nn.Module:
        accepted = inspect.signature(self._module_class.__init__).parameters
        available = {"input_size": self.input_size, "n_classes": self.n_classes, "datastructure": self.datastructure}
        kwargs = {name: available[name] for name in _CONSTRUCTOR_ARGS if name in accepted}
        return self._module_class(**kwargs)

    def _run(self, x: Any, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        tabular, _support = x
        if self._model is None:
            raise TrainingError("model_not_initialised", "call initialise_model() before training")
        out = self._model(tabular, labels=labels)
        if not isinstance(out, dict) or "outputs" not in out or (labels is not None and "loss" not in out):
            raise TrainingError(
                "forward_bad_output",
                f"{self._module_class.__name__}.forward must return a dict with 'outputs' (and 'loss' given labels)",
            )
        return out

    def forward(self, x: Any) -> Any:
        return self._run(x, None)["outputs"]

    def _log_accuracy(self, name: str, outputs: torch.Tensor, y: torch.Tensor) -> None:
        if self.datastructure.task == "classification" and outputs.ndim == 2 and outputs.shape[1] == self.n_classes:
            self.log(name, accuracy(outputs.softmax(dim=1), y, task="multiclass", num_classes=self.n_classes))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._run(x, y)["loss"]
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        out = self._run(x, y)
        self.log("val_loss", out["loss"])
        self._log_accuracy("val_accuracy", out["outputs"], y)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        out = self._run(x, y)
        self.log("test_loss", out["loss"])
        self._log_accuracy("test_accuracy", out["outputs"], y)
        outputs = out["outputs"]
        if self.datastructure.task == "classification" and outputs.ndim == 2:
            outputs = outputs.softmax(dim=1)
        return {"predictions": outputs, "targets": y}

    def configure_optimizers(self) -> Any:
        return make_optimizer(
            str(self.hyperparameters.get("optimizer", "AdamW")), self.parameters(), lr=self.learning_rate
        )
