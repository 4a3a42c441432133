"""The worker's rehearsal: a train task of our own, run through the worker's whole path before any real task.

Owns the rehearsal's input (``write_rehearsal``: a small synthetic table prepared by ``pod_agent.data`` as
a pod prepares its own, a PodModel source, its seeded starting weights, and the request a pod would send:
weights pinned by sha256, the incoming model evaluated first) and running it (``rehearse``: request
validation, model import and build, weights check, the three splits' loaders, the probe, Lightning's fit,
validation and test, the encoded update), answers discarded.

Run once in a worker's warm-up (``worker.prepare``), it pays the path's first-use costs before any task.
Run again in each fork-server child while it waits for its task (``sandbox.zygote``), it pays the child's
copy-on-write faults: a forked child shares the zygote's memory until it writes a page, and the objects
a task's path touches (reference counts, allocator pools) are spread over some 4,000 pages, ~15 ms of
faults measured in a child's first step on 2 cores. Nothing of a task is involved: the rows are random,
drawn from a fixed seed, and the rehearsal runs before the child has seen its request.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import save

from pod_agent.config import DatasourceSection
from pod_agent.data import open_datasource, prepare_task_input
from pod_agent.errors import TrainingError
from pod_agent.protocol import (
    CohortEntry,
    DataSelection,
    Hyperparameters,
    ModelRef,
    TaskPayload,
    WeightsRef,
    cohort_tree,
)
from pod_agent.training.engine import WEIGHTS_FILE_NAME
from pod_agent.training.loading import MODULE_NAME, SOURCE_FILE_NAME
from pod_agent.training.local import initial_weights
from pod_agent.training.wall import TrainerSettings, WorkerPrivacy, WorkerRequest
from pod_agent.training.worker import serve

REHEARSAL_ROWS = 40
_BATCH_SIZE = 16
_SEED = 0
_TARGET = "label"
_CLASS_NAME = "RehearsalModel"
# What most tasks send: a PodModel with the SDK's classifier steps over an MLP.
_SOURCE = '''
from torch import nn

from pod_agent.sdk import PodClassifierMixin, PodModel


class RehearsalModel(PodClassifierMixin, PodModel):
    def create_model(self):
        return nn.Sequential(nn.Linear(self.datastructure.input_size, 16), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(16, self.n_classes))

    def forward(self, x):
        tabular, support = x
        return super().forward((tabular.float(), support))
'''


@dataclass(frozen=True)
class Rehearsal:
    """A written rehearsal: its input directory and the request to run on it."""

    input_dir: Path
    request: dict[str, Any]


class _Channel:
    """An in-process channel: the rehearsal's result is dropped, a failure raised."""

    def __init__(self, rehearsal: Rehearsal, work_dir: Path) -> None:
        self.input_dir, self.work_dir, self._request = rehearsal.input_dir, work_dir, rehearsal.request

    def request(self) -> dict[str, Any]:
        return self._request

    def progress(self, event: dict[str, Any]) -> None:
        pass

    def result(self, header: dict[str, Any], payload: bytes) -> None:
        pass

    def fail(self, reason: str) -> None:
        raise TrainingError(reason, "the worker's own rehearsal task failed")


def write_rehearsal(root: Path) -> Rehearsal:
    """Write the rehearsal's table and task input under ``root`` (the worker's home, before any task)."""
    rng = np.random.default_rng(_SEED)
    table = pa.table({"size": rng.normal(size=REHEARSAL_ROWS), "weight": rng.normal(size=REHEARSAL_ROWS),
                      "colour": rng.choice(["red", "green", "blue"], REHEARSAL_ROWS),
                      _TARGET: rng.choice(["yes", "no"], REHEARSAL_ROWS)})
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "table.parquet")
    source = open_datasource(DatasourceSection(path=root / "table.parquet"))
    schema = source.schema()
    input_dir = root / "input"
    selection = DataSelection(target=_TARGET, categorical_encoding="hashed")
    prepared = prepare_task_input(source, schema, selection, input_dir, share_categories=False)
    model = ModelRef(style="lightning", name="rehearsal", class_name=_CLASS_NAME, source=_SOURCE,
                     sha256=hashlib.sha256(_SOURCE.encode()).hexdigest())
    (input_dir / SOURCE_FILE_NAME).write_text(_SOURCE, encoding="utf-8")
    hyperparameters = Hyperparameters(epochs=1, batch_size=_BATCH_SIZE, seed=_SEED)
    weights = save(initial_weights(model, datastructure=prepared.datastructure, hyperparameters=hyperparameters))
    (input_dir / WEIGHTS_FILE_NAME).write_bytes(weights)
    now, key = int(time.time()), "0" * 64
    task = TaskPayload(
        task_id=str(uuid.uuid4()), modeller_id=key, issued_at=now, expires_at=now + 3600, nonce=secrets.token_hex(16),
        cohort=cohort_tree([CohortEntry(pod="rehearsal", schema_hash=schema.hash(), key_id=key)]).commitment,
        kind="train", model=model, hyperparameters=hyperparameters, data=selection, evaluate_first=True,
        weights=WeightsRef(blob_id="rehearsal", sha256=hashlib.sha256(weights).hexdigest(), size_bytes=len(weights)),
    )
    request = WorkerRequest(task=task, datastructure=prepared.datastructure,
                            trainer=TrainerSettings(accelerator="cpu", devices=1, seed=_SEED),
                            privacy=WorkerPrivacy(min_rows=1), public_schema=schema.public(False))
    # Sent as the agent sends it: JSON, parsed again by the worker.
    return Rehearsal(input_dir=input_dir, request=json.loads(request.model_dump_json()))


def rehearse(rehearsal: Rehearsal, work_dir: Path) -> None:
    """Run the rehearsal task through ``worker.serve`` with scratch under ``work_dir`` (removed after);
    raises TrainingError when it fails. Warnings are ours to drop here: the task's own are left alone."""
    scratch = work_dir / "rehearsal"
    scratch.mkdir()
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            serve(_Channel(rehearsal, scratch))
    finally:
        torch.set_num_threads(threads)
        # The rehearsal's model module goes; a task's own is imported afresh.
        sys.modules.pop(MODULE_NAME, None)
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["REHEARSAL_ROWS", "Rehearsal", "rehearse", "write_rehearsal"]
