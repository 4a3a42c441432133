"""Run one train / evaluate / predict task on prepared input with a Lightning Trainer.

Owns the Trainer settings (accelerator and devices from the request, deterministic
seed, epochs xor steps, no checkpoints, no logger, no progress bar, scratch as root
dir), the choice of data-parallel training (``trainer.devices`` above one: that many
ranks, ``ranks.py``, gloo on CPU and NCCL on GPU, the training split sharded across
them; evaluate and predict run on one device), the pre-flight checks (a probe forward
pass, finite losses), progress events and what each kind returns. It runs inside the
sandbox (``worker.py``) and, for a modeller's local debugging, in-process (``local.py``):
the same code either way.

The request is a ``wall.WorkerRequest`` (``trainer.threads`` None: DEFAULT_THREADS torch
intra-op threads); the answer a ``wall.WorkerResultHeader`` and a safetensors payload,
progress ``wall.WorkerProgress`` events. ``train`` returns the
floating state (``tensors.py``) as new - old (``returns = "update"``) or new values,
``n_rows`` = training rows, and with ``task.evaluate_first`` the test split's metrics
(``test_*``) of the weights it started from, measured after training on the state kept from before
the first step (``incoming.py``), so the first step waits for no evaluation; it trains with
the task's FedProx term and SCAFFOLD correction added to the gradients (``correction.py``);
``evaluate`` returns metrics only, ``n_rows`` = test rows;
``predict`` returns ``predictions`` (float32 ``[rows, k]``) for the split named by
hyperparameter ``predict_split`` (default ``test``), only when that split has at
least ``privacy.min_rows`` rows.

Failure codes besides ``loading.py``'s: ``bad_request``, ``data_invalid``,
``weights_hash_mismatch``, ``weights_invalid``, ``weights_mismatch``,
``forward_shape_mismatch``, ``forward_error``, ``forward_bad_output``,
``non_finite_loss``, ``training_error``, ``evaluation_error``, ``no_predictions``,
``bad_predictions``, ``too_few_rows``, ``empty_split``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator

from pod_agent.data import DATA_FILE_NAME, SPLIT_CODES, read_datastructure
from pod_agent.errors import DataError, TrainingError
from pod_agent.protocol import Hyperparameters, ModelRef, TaskPayload
from pod_agent.sdk import Datastructure, PodModel
from pod_agent.training.correction import local_correction
from pod_agent.training.dataset import SplitBatches
from pod_agent.training.incoming import IncomingState
from pod_agent.training.loading import build_model
from pod_agent.training.ranks import ForkedRanks, data_parallel
from pod_agent.training.tensors import encode, exchanged_state, load_pretrained
from pod_agent.training.wall import WorkerProgress, WorkerRequest, WorkerResultHeader

WEIGHTS_FILE_NAME = "weights.safetensors"
PROGRESS_INTERVAL_S = 1.0  # at most one training progress event per second
# A pod shares its host (other pods, the agent, the owner's work). Measured on a 2-core
# CI-like host under load, the tutorial MLP took 43 ms per step with torch's 2 spinning
# intra-op threads and 2 ms with one; more threads pay off only for large models on an
# idle host, which a request may ask for with trainer.threads.
DEFAULT_THREADS = 1
_PROBE_ROWS = 4
_LOOPBACK = "lo" if sys.platform == "linux" else "lo0"
_SYNC_DIST_ADVICE = r"It is recommended to use `self\.log\(.*sync_dist=True"
_SHAPE_WORDS = ("shape", "size", "mat1", "mat2", "dimension")

Progress = Callable[[WorkerProgress], None]


@dataclass(frozen=True)
class TaskOutput:
    header: WorkerResultHeader
    payload: bytes


@dataclass(frozen=True)
class _Settings:
    task: TaskPayload
    datastructure: Datastructure
    accelerator: str
    # Processes that train together (``trainer.devices`` resolved); ``ranks`` once they run (``_parallel``).
    world_size: int
    seed: int
    min_rows: int
    schema: Mapping[str, object]
    threads: int
    ranks: ForkedRanks | None = None


def run_task(request: WorkerRequest, *, input_dir: Path, work_dir: Path, progress: Progress) -> TaskOutput:
    """Run the task described by ``request`` on ``input_dir``; raises TrainingError(reason)."""
    settings = _settings(request, input_dir)
    task = settings.task
    if task.model is None or task.kind not in ("train", "evaluate", "predict"):
        raise TrainingError(
            "bad_request", f"kind {task.kind!r} with model={task.model is not None} is not a model task"
        )
    data_path = input_dir / DATA_FILE_NAME
    # cuBLAS needs this to be deterministic; harmless on CPU and before any CUDA use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(settings.threads)
    kwargs = model_kwargs(task.hyperparameters, datastructure=settings.datastructure, schema=settings.schema)
    model = seeded_model(task.model, seed=settings.seed, input_dir=input_dir, init_kwargs=kwargs)
    weights = input_dir / WEIGHTS_FILE_NAME
    if weights.exists():
        load_pretrained(model, _read_checked_weights(task, weights), task.hyperparameters.exchange)
    elif task.weights is not None:
        raise TrainingError("weights_invalid", "the task names weights but the input has no weights file")
    batch_size = task.hyperparameters.batch_size
    # Only training shuffles: predict hands its split's rows back in the file's order.
    shuffle = task.kind == "train"
    loaders = {
        split: SplitBatches(
            data_path, split=split, batch_size=batch_size, shuffle=shuffle and split == "train", seed=settings.seed,
            shard=split == "train",
        )
        for split in SPLIT_CODES
    }
    _probe_forward(model, loaders, settings.datastructure)
    if task.kind == "train":
        extra = local_correction(task, input_dir)  # FedProx's term, SCAFFOLD's correction: the pod's, not the model's
        return _train(model, loaders, settings, work_dir=work_dir, progress=progress, extra=extra)
    if task.kind == "evaluate":
        return _evaluate(model, loaders, settings, work_dir=work_dir)
    return _predict(model, loaders, settings, work_dir=work_dir)


def _settings(request: WorkerRequest, input_dir: Path) -> _Settings:
    """The request with its defaults filled in and the datastructure built."""
    try:
        datastructure = Datastructure.coerce(request.datastructure or read_datastructure(input_dir / DATA_FILE_NAME))
    except (TypeError, ValueError, DataError) as exc:
        raise TrainingError("bad_request", f"datastructure unusable: {exc}") from exc
    trainer, task = request.trainer, request.task
    return _Settings(
        task=task,
        datastructure=datastructure,
        accelerator=trainer.accelerator,
        world_size=_world_size(trainer.accelerator, trainer.devices) if task.kind == "train" else 1,
        seed=task.hyperparameters.seed if trainer.seed is None else trainer.seed,
        min_rows=request.privacy.min_rows,
        schema=request.public_schema,
        threads=DEFAULT_THREADS if trainer.threads is None else trainer.threads,
    )


def _world_size(accelerator: str, devices: int | str) -> int:
    """How many ranks train: ``devices``, where "auto" is every visible GPU, or one process on CPU."""
    if isinstance(devices, int):
        return devices
    return CUDAAccelerator.auto_device_count() if _on_gpu(accelerator) else 1


def _on_gpu(accelerator: str) -> bool:
    # Lightning counts GPUs through NVML, without initialising CUDA, so the ranks can still fork.
    return accelerator == "gpu" or (accelerator == "auto" and CUDAAccelerator.is_available())


@contextlib.contextmanager
def _parallel(settings: _Settings, *, work_dir: Path) -> Iterator[_Settings]:
    """The settings to train under: as they are for one rank; for more, inside the ranks' block."""
    if settings.world_size == 1:
        yield settings
        return
    # Lightning would otherwise size each rank's thread pool to the host's cores / ranks.
    os.environ["OMP_NUM_THREADS"] = str(settings.threads)
    # The ranks share one host: gloo binds loopback by name, not by resolving a hostname the sandbox lacks.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", _LOOPBACK)
    backend = "nccl" if _on_gpu(settings.accelerator) else "gloo"
    with warnings.catch_warnings(), data_parallel(settings.world_size, backend=backend,
                                                  store_dir=work_dir / "ranks") as ranks:
        # Every rank validates and tests on the whole split, so a metric is the same on each and needs no sync.
        warnings.filterwarnings("ignore", message=_SYNC_DIST_ADVICE)
        yield replace(settings, ranks=ranks)


def model_kwargs(
    hp: Hyperparameters, *, datastructure: Datastructure, schema: Mapping[str, object]
) -> dict[str, Any]:
    """The keyword arguments a model class is instantiated with (hyperparameter extras first)."""
    return {
        **hp.extra,
        "datastructure": datastructure,
        "schema": schema,
        "epochs": hp.epochs,
        "steps": hp.steps,
        "batch_size": hp.batch_size,
        "learning_rate": hp.learning_rate,
    }


def seeded_model(ref: ModelRef, *, seed: int, input_dir: Path, init_kwargs: Mapping[str, Any]) -> PodModel:
    """Seed every RNG, then build the model: the same seed gives the same initial weights everywhere."""
    pl.seed_everything(seed, workers=True, verbose=False)
    return build_model(ref, input_dir=input_dir, init_kwargs=init_kwargs)


def _read_checked_weights(task: TaskPayload, path: Path) -> bytes:
    """The weights file's bytes, once they match the sha256 the signed task names."""
    if task.weights is None:
        raise TrainingError("weights_invalid", "the input has a weights file the task does not name")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != task.weights.sha256:
        raise TrainingError("weights_hash_mismatch", "pretrained weights sha256 differs from the signed task")
    return blob


def _probe_forward(model: PodModel, loaders: Mapping[str, SplitBatches], ds: Datastructure) -> None:
    """One forward pass on a few rows, so a shape mistake is named before training starts."""
    source = next((loader for loader in loaders.values() if loader.n_rows), None)
    if source is None:
        raise TrainingError("empty_split", "the prepared input has no rows")
    (tabular, support), _y = source.peek(_PROBE_ROWS)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model((tabular, support))
    except TrainingError:
        raise
    except Exception as exc:
        text = str(exc).lower()
        code = "forward_shape_mismatch" if any(w in text for w in _SHAPE_WORDS) else "forward_error"
        raise TrainingError(code, f"forward on a [{len(tabular)}, {ds.input_size}] batch raised {exc!r}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != len(tabular):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TrainingError(
            "forward_shape_mismatch", f"forward must return [batch, ...] for a batch of {len(tabular)}; got {shape}"
        )


class _Progress(pl.Callback):
    """Streams training and validation progress; fails the task on a non-finite loss."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._last = 0.0
        self.last_validated_step = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Every rank checks its losses; only rank 0 (the worker itself) may write a frame.
        if trainer.global_step == 0 and batch_idx == 0 and trainer.is_global_zero:
            self._progress(WorkerProgress(stage="training", epoch=trainer.current_epoch, step=0))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            raise TrainingError("training_error", "training_step must return a loss tensor (or a dict with 'loss')")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError("non_finite_loss", f"loss became {value} at step {trainer.global_step}")
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S and trainer.is_global_zero:
            self._last = now
            self._progress(
                WorkerProgress(stage="training", epoch=trainer.current_epoch, step=trainer.global_step, loss=value)
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.last_validated_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        # No metrics: a model names and computes them, so they would be a channel of its choosing
        # to the hub; the result's metrics pass the contract's checks instead.
        self._progress(WorkerProgress(stage="validating", epoch=trainer.current_epoch, step=trainer.global_step))


class _CollectTestOutputs(pl.Callback):
    def __init__(self) -> None:
        self.predictions: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, Mapping) and isinstance(outputs.get("predictions"), torch.Tensor):
            self.predictions.append(outputs["predictions"].detach().to("cpu", torch.float32))
            if isinstance(outputs.get("targets"), torch.Tensor):
                self.targets.append(outputs["targets"].detach().cpu())


def _trainer(settings: _Settings, *, work_dir: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    hp = settings.task.hyperparameters
    if hp.epochs is not None and hp.steps is not None:
        raise TrainingError("bad_request", "give epochs or steps, not both")
    # Steps-based: no epoch limit (Lightning reads max_epochs=None with max_steps as unbounded).
    max_epochs = None if hp.steps is not None else (hp.epochs or 1)
    ranks = settings.ranks
    parallel: dict[str, Any] = {"devices": 1} if ranks is None else {
        "devices": ranks.world_size(), "strategy": "ddp", "plugins": [ranks]}
    return pl.Trainer(
        accelerator=settings.accelerator,
        **parallel,
        max_epochs=max_epochs,
        max_steps=hp.steps if hp.steps is not None else -1,
        deterministic=True,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=work_dir,
        callbacks=callbacks,
    )


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[name] = float(value.detach().cpu())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


# Lightning 2.6's own pytree helper trips a deprecation in typing_extensions on torch 2.13,
# once per step; it is not ours to fix, and under ``-W error`` it would fail every task.
_LIGHTNING_PYTREE_WARNING = r".*isinstance\(treespec, LeafSpec\)"


def _run_stage(stage: Callable[[], Any], code: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LIGHTNING_PYTREE_WARNING, category=FutureWarning)
            stage()
    except TrainingError:
        raise
    except Exception as exc:
        raise TrainingError(code, f"{code.replace('_', ' ')}: {exc!r}") from exc


def _train(
    model: PodModel, loaders: Mapping[str, SplitBatches], settings: _Settings, *, work_dir: Path, progress: Progress,
    extra: list[pl.Callback],
) -> TaskOutput:
    train = loaders["train"]
    if train.n_rows == 0:
        raise TrainingError("empty_split", "the training split has no rows")
    hp = settings.task.hyperparameters
    before = exchanged_state(model, hp.exchange)
    # evaluate_first: the incoming state is evaluated after training (incoming.py), so the first step
    # waits for no test loop; the update is the same either way.
    incoming = IncomingState.keep(model) if settings.task.evaluate_first else None
    # Several ranks run every Lightning call below alike (each on the whole test and validation splits,
    # on its slice of each training batch); only rank 0 leaves the block, with rank 0's metrics.
    with _parallel(settings, work_dir=work_dir) as ranked:
        metrics = _fit(model, loaders, ranked, work_dir=work_dir, progress=progress, extra=extra)
        after = exchanged_state(model, hp.exchange)
        if incoming is not None:
            metrics = _incoming_metrics(model, incoming, loaders["test"], ranked, work_dir=work_dir) | metrics
    tensors = after if settings.task.returns == "weights" else {n: after[n] - before[n] for n in after}
    described, payload = encode(tensors, hp.wire_dtype)
    return TaskOutput(WorkerResultHeader(metrics=metrics, n_rows=train.n_rows, tensors=described), payload)


def _fit(
    model: PodModel, loaders: Mapping[str, SplitBatches], settings: _Settings, *, work_dir: Path, progress: Progress,
    extra: list[pl.Callback],
) -> dict[str, float]:
    train, val = loaders["train"], loaders["validation"]
    tracker = _Progress(progress)
    trainer = _trainer(settings, work_dir=work_dir, callbacks=[tracker, *extra])
    val_loader = _loader(val) if val.n_rows else None
    _run_stage(
        lambda: trainer.fit(model, train_dataloaders=_loader(train), val_dataloaders=val_loader), "training_error"
    )
    metrics = _scalars(trainer.callback_metrics)
    if val_loader is not None and tracker.last_validated_step != trainer.global_step:
        # Training ended between validations (steps-based): validate the final weights.
        _run_stage(lambda: trainer.validate(model, dataloaders=_loader(val), verbose=False), "evaluation_error")
        metrics |= _scalars(trainer.callback_metrics)
    return metrics


def _loader(batches: SplitBatches) -> torch.utils.data.DataLoader[Any]:
    return torch.utils.data.DataLoader(batches, batch_size=None)


def _evaluate(
    model: PodModel, loaders: Mapping[str, SplitBatches], settings: _Settings, *, work_dir: Path
) -> TaskOutput:
    val, test = loaders["validation"], loaders["test"]
    if val.n_rows == 0 and test.n_rows == 0:
        raise TrainingError("empty_split", "neither the validation nor the test split has rows")
    metrics: dict[str, float] = {}
    if val.n_rows:
        trainer = _trainer(settings, work_dir=work_dir, callbacks=[])
        _run_stage(lambda: trainer.validate(model, dataloaders=_loader(val), verbose=False), "evaluation_error")
        metrics |= _scalars(trainer.callback_metrics)
    metrics |= _test_metrics(model, test, settings, work_dir=work_dir)
    return TaskOutput(WorkerResultHeader(metrics=metrics, n_rows=test.n_rows, tensors={}), b"")


def _incoming_metrics(
    model: PodModel, incoming: IncomingState, test: SplitBatches, settings: _Settings, *, work_dir: Path
) -> dict[str, float]:
    """The test metrics of the state the task started from (fit never runs the test loop, so no name
    collides), measured on the model put back to that state; the trained state was taken before."""
    _run_stage(lambda: incoming.restore(model), "evaluation_error")
    return _test_metrics(model, test, settings, work_dir=work_dir)


def _test_metrics(model: PodModel, test: SplitBatches, settings: _Settings, *, work_dir: Path) -> dict[str, float]:
    """The model's test-split metrics as it stands (none for an empty split), with ``test_accuracy``
    computed from its predictions when a classifier logs none."""
    if not test.n_rows:
        return {}
    collect = _CollectTestOutputs()
    trainer = _trainer(settings, work_dir=work_dir, callbacks=[collect])
    _run_stage(lambda: trainer.test(model, dataloaders=_loader(test), verbose=False), "evaluation_error")
    metrics = _scalars(trainer.callback_metrics)
    if "test_accuracy" not in metrics and settings.datastructure.task == "classification":
        accuracy = _accuracy(collect)
        if accuracy is not None:
            metrics["test_accuracy"] = accuracy
    return metrics


def _accuracy(collect: _CollectTestOutputs) -> float | None:
    if not collect.predictions or len(collect.targets) != len(collect.predictions):
        return None
    preds, targets = torch.cat(collect.predictions), torch.cat(collect.targets)
    if preds.ndim != 2 or preds.shape[1] < 2:
        return None
    return float((preds.argmax(dim=1) == targets).float().mean())


def _predict(
    model: PodModel, loaders: Mapping[str, SplitBatches], settings: _Settings, *, work_dir: Path
) -> TaskOutput:
    split = str(settings.task.hyperparameters.extra.get("predict_split", "test"))
    if split not in loaders:
        raise TrainingError("bad_request", f"split {split!r} is not one of {list(loaders)}")
    batches = loaders[split]
    if batches.n_rows < settings.min_rows:
        raise TrainingError(
            "too_few_rows", f"split {split!r} has {batches.n_rows} rows, under privacy.min_rows={settings.min_rows}"
        )
    collect = _CollectTestOutputs()
    trainer = _trainer(settings, work_dir=work_dir, callbacks=[collect])
    _run_stage(lambda: trainer.test(model, dataloaders=_loader(batches), verbose=False), "evaluation_error")
    if collect.predictions:
        predictions = torch.cat(collect.predictions)
    elif getattr(model, "preds", None):
        # A ported test_step that extends self.preds instead of returning predictions.
        predictions = torch.tensor(model.preds, dtype=torch.float32)
    else:
        raise TrainingError("no_predictions", "test_step returned no {'predictions': tensor} and filled no self.preds")
    if predictions.shape[0] != batches.n_rows:
        raise TrainingError("bad_predictions", f"{predictions.shape[0]} predictions for {batches.n_rows} rows")
    if predictions.ndim == 1:
        predictions = predictions.unsqueeze(1)
    if predictions.ndim != 2:
        raise TrainingError("bad_predictions", f"predictions must be [rows, k]; got {list(predictions.shape)}")
    described, payload = encode({"predictions": predictions})
    return TaskOutput(WorkerResultHeader(metrics={}, n_rows=batches.n_rows, tensors=described), payload)

