"""Shared helpers of the training tests: tasks, model sources and an in-process channel.

The in-process channel stands in for the sandbox's child-side Channel so the worker's
logic is tested without process start-up; tests/training/test_sandboxed.py runs the
same worker through the real SandboxRunner.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pod_agent.protocol import CohortEntry, cohort_tree
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, TaskPayload, WeightsRef

MODELLER_ID = "ab" * 32
SCHEMA_HASH = "cd" * 32

TUTORIAL_MODEL = '''
import torch
from torch import nn as nn
from torch.nn import functional as F
from torchmetrics.functional import accuracy

from pod_agent.sdk import PodClassifierMixin, PodModel


class MyCustomModel(PodClassifierMixin, PodModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.learning_rate = 0.001

    def create_model(self):
        self.input_size = self.datastructure.input_size
        return nn.Sequential(
            nn.Linear(self.input_size, 500),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(500, self.n_classes),
        )

    def forward(self, x):
        x, sup = x
        x = self._model(x.float())
        return x

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.cross_entropy(y_hat, y)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        preds = self(x)
        loss = F.cross_entropy(preds, y)
        preds = F.softmax(preds, dim=1)
        acc = accuracy(preds, y, task="multiclass", num_classes=self.n_classes)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", acc, prog_bar=True)
        return {"val_loss": loss, "val_acc": acc}

    def test_step(self, batch, batch_idx):
        x, y = batch
        preds = self(x)
        preds = F.softmax(preds, dim=1)
        return {"predictions": preds, "targets": y}

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.learning_rate)
        return optimizer
'''

MODULE_STYLE_MODEL = '''
from torch import nn
from torch.nn import functional as F


class TabularNet(nn.Module):
    def __init__(self, input_size, n_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_size, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, n_classes))

    def forward(self, inputs, labels=None):
        outputs = self.body(inputs)
        out = {"outputs": outputs}
        if labels is not None:
            out["loss"] = F.cross_entropy(outputs, labels)
        return out
'''

DECLARATIVE_SPEC: dict[str, object] = {
    "layers": [
        {"type": "Linear", "in_features": "input_size", "out_features": 32},
        {"type": "GELU"},
        {"type": "Dropout", "p": 0.1},
        {"type": "Linear", "in_features": 32, "out_features": "n_classes"},
    ],
    "optimizer": "Adam",
    "loss": "CrossEntropy",
    "learning_rate": 0.003,
}


def source_ref(source: str, class_name: str, *, style: str = "lightning") -> ModelRef:
    return ModelRef(
        style=style,  # type: ignore[arg-type]
        name=class_name,
        class_name=class_name,
        source=source,
        sha256=hashlib.sha256(source.encode()).hexdigest(),
    )


def spec_ref(spec: dict[str, object]) -> ModelRef:
    return ModelRef(style="declarative", name="spec", spec=spec, sha256="0" * 64)


def make_task(
    kind: str,
    model: ModelRef,
    *,
    weights: bytes | None = None,
    returns: str = "update",
    **hyper: Any,
) -> TaskPayload:
    now = int(time.time())
    hp = {"batch_size": 64, "seed": 7, **hyper}
    return TaskPayload(
        task_id=str(uuid.uuid4()),
        modeller_id=MODELLER_ID,
        cohort=cohort_tree([CohortEntry(pod="pod-a", schema_hash=SCHEMA_HASH, key_id=MODELLER_ID)]).commitment,
        issued_at=now,
        expires_at=now + 600,
        nonce=uuid.uuid4().hex,
        kind=kind,  # type: ignore[arg-type]
        model=model,
        hyperparameters=Hyperparameters(**hp),
        weights=None
        if weights is None
        else WeightsRef(blob_id="w", sha256=hashlib.sha256(weights).hexdigest(), size_bytes=len(weights)),
        data=DataSelection(target="TARGET"),
        returns=returns,  # type: ignore[arg-type]
    )


def stage_input(task: TaskPayload, *, data_file: Path, into: Path, weights: bytes | None = None) -> Path:
    """Lay out a task input dir the way the agent does: data.arrow, model.py, weights."""
    input_dir = into / "input"
    input_dir.mkdir(parents=True)
    shutil.copyfile(data_file, input_dir / "data.arrow")
    if task.model is not None and task.model.source is not None:
        (input_dir / "model.py").write_text(task.model.source, encoding="utf-8")
    if weights is not None:
        (input_dir / "weights.safetensors").write_bytes(weights)
    (into / "work").mkdir()
    return input_dir


@dataclass
class InProcessChannel:
    """The child-side Channel API, recording what the worker sends."""

    input_dir: Path
    work_dir: Path
    sent_request: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    header: dict[str, Any] | None = None
    payload: bytes = b""
    failure: str | None = None

    def request(self) -> dict[str, Any]:
        return self.sent_request

    def progress(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def result(self, header: dict[str, Any], payload: bytes) -> None:
        self.header, self.payload = header, payload

    def fail(self, reason: str) -> None:
        self.failure = reason


def request_for(task: TaskPayload, datastructure: dict[str, Any], *, min_rows: int = 20) -> dict[str, Any]:
    return {
        "task": task.model_dump(mode="json"),
        "datastructure": datastructure,
        "trainer": {"accelerator": "cpu", "devices": 1, "threads": 1},
        "privacy": {"min_rows": min_rows},
    }


# The run_in_process fixture: (task, *, weights=None, min_rows=20, overrides=None) -> channel.
RunTask = Callable[..., InProcessChannel]
