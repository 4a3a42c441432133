"""Local fit: a modeller trains a model on a CSV/Parquet file exactly as a pod would.

Owns the in-process path for debugging before sending: the same data preparation
(``pod_agent.data.task_input``), the same request and the same ``engine.run_task``
(Trainer settings, checks, failure codes) as the sandboxed worker, without the
sandbox. With the same file, selection and hyperparameters the weights equal what a
pod computes on that data. ``pod-agent modeller fit-local`` is its CLI.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from pod_agent.config import DatasourceSection
from pod_agent.data import open_datasource, prepare_task_input
from pod_agent.errors import TrainingError
from pod_agent.protocol import (
    CohortEntry,
    DataSelection,
    Hyperparameters,
    ModelRef,
    ScaffoldParams,
    TaskPayload,
    WeightsRef,
    cohort_tree,
)
from pod_agent.sdk import Datastructure
from pod_agent.training.control import CORRECTION_FILE_NAME
from pod_agent.training.engine import WEIGHTS_FILE_NAME, model_kwargs, run_task, seeded_model
from pod_agent.training.loading import SOURCE_FILE_NAME, SPEC_FILE_NAME
from pod_agent.training.tensors import exchanged_state
from pod_agent.training.wall import TrainerSettings, WorkerPrivacy, WorkerProgress, WorkerRequest

LOCAL_POD = "local"
_LOCAL_ID = "0" * 64  # no signer and no registered schema: a local fit is never sent anywhere


@dataclass(frozen=True)
class LocalFit:
    """The trained weights (floating state, float32), the metrics and what the model was built from."""

    weights: dict[str, torch.Tensor]
    metrics: dict[str, float]
    n_rows: int
    datastructure: dict[str, object]
    events: list[dict[str, object]]


def fit_local(
    model: ModelRef,
    *,
    data: Path | DatasourceSection,
    selection: DataSelection,
    hyperparameters: Hyperparameters,
    weights: Path | None = None,
    accelerator: str = "auto",
    devices: int | str = 1,
    on_progress: Callable[[dict[str, object]], None] | None = None,
    scratch: Path | None = None,
    proximal_mu: float | None = None,
    correction: Mapping[str, np.ndarray] | None = None,
    evaluate_first: bool = False,
) -> LocalFit:
    """Prepare ``data`` as a pod would, train ``model`` in this process and return the new weights.

    ``proximal_mu`` and ``correction`` (SCAFFOLD's ``c - c_i``, which needs ``weights``) are applied by the
    engine as a pod applies a task's (``correction.py``); ``evaluate_first`` adds the test split's metrics
    (``test_*``) of the weights it starts from, as a pod's federated train task reports them.

    Raises DataError for unusable data or selection and TrainingError(reason) with the
    same codes the sandboxed worker reports.
    """
    section = data if isinstance(data, DatasourceSection) else DatasourceSection(path=data)
    ds = open_datasource(section)
    schema = ds.schema()
    events: list[dict[str, object]] = []

    def record(progress: WorkerProgress) -> None:
        event: dict[str, object] = progress.model_dump(mode="json", exclude_none=True)
        events.append(event)
        if on_progress is not None:
            on_progress(event)

    with tempfile.TemporaryDirectory(prefix="pod-agent-fit-", dir=scratch) as tmp:
        root = Path(tmp)
        input_dir, work_dir = root / "input", root / "work"
        work_dir.mkdir()
        # The modeller's own file: its category values are theirs to see (as the schema below).
        prepared = prepare_task_input(ds, schema, selection, input_dir, share_categories=True)
        weights_ref = None
        if weights is not None:
            blob = weights.read_bytes()
            (input_dir / WEIGHTS_FILE_NAME).write_bytes(blob)
            weights_ref = WeightsRef(blob_id="local", sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))
        if model.source is not None:
            (input_dir / SOURCE_FILE_NAME).write_text(model.source, encoding="utf-8")
        elif model.spec is not None:
            (input_dir / SPEC_FILE_NAME).write_text(json.dumps(model.spec), encoding="utf-8")
        scaffold = None
        if correction is not None:
            if weights_ref is None:
                raise TrainingError("bad_request", "a SCAFFOLD correction needs the weights it corrects from")
            save_numpy(dict(correction), str(input_dir / CORRECTION_FILE_NAME))
            scaffold = ScaffoldParams(run_id=str(uuid.uuid4()), control=weights_ref)
        now = int(time.time())
        task = TaskPayload(
            task_id=str(uuid.uuid4()),
            modeller_id=_LOCAL_ID,
            cohort=cohort_tree([CohortEntry(pod=LOCAL_POD, schema_hash=schema.hash(), key_id=_LOCAL_ID)]).commitment,
            issued_at=now,
            expires_at=now + 3600,
            nonce=secrets.token_hex(16),
            kind="train",
            model=model,
            hyperparameters=hyperparameters,
            weights=weights_ref,
            data=selection,
            # A SCAFFOLD task returns its update (the agent derives the control step from it): added back below.
            returns="weights" if scaffold is None else "update",
            proximal_mu=proximal_mu,
            scaffold=scaffold,
            evaluate_first=evaluate_first,
        )
        request = WorkerRequest(
            task=task,
            datastructure=prepared.datastructure,
            trainer=_trainer_settings(accelerator, devices),
            # min_rows guards what a predict task hands back; a local fit only trains.
            privacy=WorkerPrivacy(min_rows=1),
            public_schema=schema.public(share_categories=True),
        )
        # The engine pins torch's thread count as a pod does; give the caller's back afterwards.
        threads = torch.get_num_threads()
        try:
            output = run_task(request, input_dir=input_dir, work_dir=work_dir, progress=record)
        finally:
            torch.set_num_threads(threads)
    trained = load_safetensors(output.payload) if output.payload else {}
    if scaffold is not None and weights is not None:
        start = load_safetensors(weights.read_bytes())
        trained = {name: start[name] + delta for name, delta in trained.items()}
    return LocalFit(
        weights=trained,
        metrics=dict(output.header.metrics),
        n_rows=output.header.n_rows,
        datastructure=prepared.datastructure,
        events=events,
    )


def _trainer_settings(accelerator: str, devices: int | str) -> TrainerSettings:
    try:
        return TrainerSettings.model_validate({"accelerator": accelerator, "devices": devices})
    except ValidationError as exc:
        raise TrainingError(
            "bad_request", f"accelerator {accelerator!r} with devices {devices!r}: give auto, cpu or gpu and a count"
        ) from exc


def initial_weights(
    model: ModelRef,
    *,
    datastructure: Mapping[str, object],
    hyperparameters: Hyperparameters,
    schema: Mapping[str, object] | None = None,
) -> dict[str, np.ndarray]:
    """The floating state (float32) a pod's worker starts from for this model and seed.

    A train task without weights builds exactly this on every pod whose datastructure
    has the same shapes, so a modeller can start federated averaging from it.
    ``datastructure`` comes from ``pod_agent.data.task_input.plan_datastructure``.
    """
    kwargs = model_kwargs(hyperparameters, datastructure=Datastructure.coerce(datastructure), schema=schema or {})
    # An empty input dir: the source or spec comes from the ModelRef itself, as on a pod.
    with tempfile.TemporaryDirectory(prefix="pod-agent-init-") as tmp:
        built = seeded_model(model, seed=hyperparameters.seed, input_dir=Path(tmp), init_kwargs=kwargs)
    return {name: t.numpy() for name, t in exchanged_state(built, hyperparameters.exchange).items()}


def save_fit(fit: LocalFit, out_dir: Path) -> Path:
    """Write ``model.safetensors`` (the weights, loadable as pretrained weights) and ``metrics.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.safetensors"
    save_file({name: t.contiguous() for name, t in fit.weights.items()}, str(path))
    summary = {"metrics": fit.metrics, "n_rows": fit.n_rows, "datastructure": fit.datastructure}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
