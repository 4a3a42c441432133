"""Benchmark: what a pod task costs over plain Lightning, and how soon training starts.

Same model (the seeds' tutorial shape: Linear(input, 500) -> ReLU -> Dropout -> Linear
to n_classes, AdamW 1e-3, cross-entropy), same prepared Adult data (train and
validation splits), same epochs, same seed, same torch thread count:

- ``plain_s``:  (a) in this process, a plain LightningModule on TensorDatasets, fed the
                way a competent user feeds an in-memory table: a ``BatchSampler``
                hands the DataLoader whole index batches, so each batch is one tensor
                gather (as the pod's loader gathers whole batches), not 64 single-row
                fetches and a collate; it logs the same metrics as the tutorial model
                (val_loss and val_acc). Model built, Trainer made, fit run; torch
                already imported.
- ``pod_s``:    (b) ``runner.run()`` of a train task through the SandboxRunner with a
                warm worker (the agent's normal set-up), plus the agent's contract check.
- ``ratio``:    pod_s / plain_s (goal <= 1.05 for a ~60 s CPU job; ``--small`` is a
                smoke size where fixed costs dominate and the ratio means little).
                (a) and (b) alternate ``REPEATS`` times (5: a quiet 2-core host spread
                the plain runs alone over 14.6-20.2 s, more than the goal's margin) and
                the fastest run of each counts: on a shared host other load only ever adds
                time. Every run's seconds are reported too (``plain_runs_s``, ``pod_runs_s``).
- ``first_step_warm_s`` / ``first_step_cold_s``: task accepted (``runner.run()``
                called) -> the worker's first training step begins (its step-0 progress
                event reaches the agent), with a parked warm worker and with a cold start.
- ``sequence_first_step_s``: a federated loop on one runner with the warm pool on
                (train, evaluate, train, each accepted ``SEQUENCE_GAP_S`` after the
                previous ended): per task, accepted -> first training step; the
                evaluate task streams no step, so its figure is accepted -> result
                (an upper bound).

    python -m bench.training [--small] [--json] [--threads N] [--level LEVEL]
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cli import parser_for, show

if TYPE_CHECKING:
    from pod_agent.protocol.messages import TaskKind

FULL_EPOCHS = 16
SMALL_EPOCHS = 1
FULL_REPEATS = 5
SMALL_REPEATS = 1
SMALL_ROWS = 4000
BATCH_SIZE = 64
SEED = 7
ENTRY = "pod_agent.training.worker"
# The demo's modeller sends a round's next task about this long after the previous result (issue 15).
SEQUENCE_GAP_S = 0.7
SEQUENCE_KINDS: tuple[TaskKind, ...] = ("train", "evaluate", "train")
SANDBOX_USER = "pod-sandbox"

TUTORIAL_SOURCE = '''
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional import accuracy

from pod_agent.sdk import PodModel


class BenchModel(PodModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.learning_rate = 0.001

    def create_model(self):
        return nn.Sequential(nn.Linear(self.input_size, 500), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(500, self.n_classes))

    def forward(self, x):
        x, sup = x
        return self._model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        preds = self(x)
        self.log("val_loss", F.cross_entropy(preds, y))
        self.log("val_acc", accuracy(preds.softmax(dim=1), y, task="multiclass", num_classes=self.n_classes))

    def test_step(self, batch, batch_idx):
        # Only the federated-loop sequence's evaluate task runs it; training never does.
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate)
'''


def _prepare(root: Path, *, small: bool) -> tuple[Path, dict[str, Any]]:
    import pyarrow.parquet as pq

    from pod_agent.config.settings import DatasourceSection
    from pod_agent.data import open_datasource
    from pod_agent.data.adult import write_adult
    from pod_agent.data.task_input import prepare_task_input
    from pod_agent.protocol.messages import DataSelection

    files = write_adult(root / "adult")
    path = files.parquet
    if small:
        path = root / "adult_small.parquet"
        pq.write_table(pq.read_table(files.parquet).slice(0, SMALL_ROWS), path)
    ds = open_datasource(DatasourceSection(path=path))
    prepared = prepare_task_input(
        ds, ds.schema(), DataSelection(target="TARGET"), root / "prepared", share_categories=False
    )
    return prepared.path, prepared.datastructure


def _plain_lightning(data_path: Path, datastructure: dict[str, Any], *, epochs: int, threads: int) -> float:
    """(a): what a data scientist would write by hand, with the same model and data."""
    import pyarrow as pa
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset
    from torchmetrics.functional import accuracy

    from pod_agent.data import dense_x

    torch.set_num_threads(threads)
    with pa.memory_map(str(data_path)) as source:
        table = pa.ipc.open_file(source).read_all()
    width = int(datastructure["input_size"])
    x = dense_x(table)
    y, split = table.column("y").to_numpy(), table.column("split").to_numpy()

    n_classes = int(datastructure["n_classes"])

    def loader(code: int, *, shuffle: bool) -> DataLoader[Any]:
        data = TensorDataset(torch.from_numpy(x[split == code].copy()), torch.from_numpy(y[split == code].copy()))
        order = RandomSampler(data) if shuffle else SequentialSampler(data)
        # batch_size=None: each sampled item is already a list of indices, gathered in one indexing call.
        return DataLoader(data, batch_size=None, sampler=BatchSampler(order, BATCH_SIZE, drop_last=False))

    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(width, 500), nn.ReLU(), nn.Dropout(0.1), nn.Linear(500, n_classes))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            xb, yb = batch
            preds = self.net(xb)
            self.log("val_loss", F.cross_entropy(preds, yb))
            self.log("val_acc", accuracy(preds.softmax(dim=1), yb, task="multiclass", num_classes=n_classes))

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    started = time.perf_counter()
    pl.seed_everything(SEED, verbose=False)
    model = Plain()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, deterministic=True, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(model, loader(0, shuffle=True), loader(1, shuffle=False))
    return time.perf_counter() - started


def _task(epochs: int, kind: TaskKind = "train") -> Any:
    from pod_agent.protocol import CohortEntry, cohort_tree
    from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, TaskPayload

    cohort = cohort_tree([CohortEntry(pod="bench", schema_hash="cd" * 32, key_id="ab" * 32)]).commitment
    now = int(time.time())
    return TaskPayload(
        task_id=str(uuid.uuid4()), modeller_id="ab" * 32, issued_at=now,
        cohort=cohort, expires_at=now + 3600,
        nonce=uuid.uuid4().hex, kind=kind,
        model=ModelRef(style="lightning", name="bench", class_name="BenchModel", source=TUTORIAL_SOURCE,
                       sha256=hashlib.sha256(TUTORIAL_SOURCE.encode()).hexdigest()),
        hyperparameters=Hyperparameters(epochs=epochs, batch_size=BATCH_SIZE, seed=SEED),
        data=DataSelection(target="TARGET"),
    )


def _stage(
    data_path: Path, root: Path, task: Any, datastructure: dict[str, Any], threads: int
) -> tuple[Path, dict[str, Any]]:
    """A task's input dir (prepared data and model source) and its worker request."""
    import shutil

    case = root / uuid.uuid4().hex[:8]
    (case / "input").mkdir(parents=True)
    shutil.copyfile(data_path, case / "input" / "data.arrow")
    (case / "input" / "model.py").write_text(TUTORIAL_SOURCE)
    request = {"task": task.model_dump(mode="json"), "datastructure": datastructure,
               "trainer": {"accelerator": "cpu", "devices": 1, "threads": threads}, "privacy": {"min_rows": 20}}
    return case, request


def _runner(level: str, *, warm: bool, warm_pool: int | None = None) -> Any:
    """A runner with the bench's limits; ``warm_pool`` None keeps the pod default."""
    from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
    from pod_agent.sandbox import SandboxRunner

    pool = {} if warm_pool is None else {"warm_pool": warm_pool}
    limits = SandboxLimitsSection(wall_timeout_s=900, cpu_time_s=3600, memory_mb=4096, warm_worker=warm, **pool)
    return SandboxRunner(SecuritySection(sandbox=level, sandbox_user=SANDBOX_USER), limits)  # type: ignore[arg-type]


async def _timed_run(runner: Any, case: Path, request: dict[str, Any]) -> tuple[Any, float, float]:
    """One job; returns (outcome, total seconds, seconds to the first training step or nan)."""
    from pod_agent.sandbox import SandboxJob

    first_step: list[float] = []
    started = time.perf_counter()

    def on_progress(event: dict[str, Any]) -> None:
        if not first_step and event.get("stage") == "training":
            first_step.append(time.perf_counter() - started)

    outcome = await runner.run(SandboxJob(entry=ENTRY, input_dir=case / "input", work_dir=case / "work",
                                          request=request), on_progress=on_progress)
    return outcome, time.perf_counter() - started, first_step[0] if first_step else float("nan")


async def _pod_task(data_path: Path, datastructure: dict[str, Any], root: Path, *, epochs: int, threads: int,
                    level: str, warm: bool) -> tuple[float, float]:
    """(b): one task through the real runner; returns (total seconds, seconds to the first step)."""
    from pod_agent.training import TensorSpec, check_result, reported_rows
    from pod_agent.training.local import initial_weights

    task = _task(epochs)
    # A pod checks the result against the task's pinned starting weights: the model as the seed builds it.
    starting = initial_weights(task.model, datastructure=datastructure, hyperparameters=task.hyperparameters)
    expected = {name: TensorSpec(tuple(array.shape)) for name, array in starting.items()}
    case, request = _stage(data_path, root, task, datastructure, threads)
    # A single task needs one parked worker; filling the whole pool would only slow the bench.
    async with _runner(level, warm=warm, warm_pool=1) as runner:
        if warm:
            await runner.prewarm(ENTRY)
            await runner.wait_warm(ENTRY)
        started = time.perf_counter()
        outcome, _total, first_step = await _timed_run(runner, case, request)
        check_result(outcome, task=task, expected=expected, rows=reported_rows(task, datastructure["n_rows"]),
                     max_bytes=512 << 20)
        total = time.perf_counter() - started
    return total, first_step


async def _sequence(data_path: Path, datastructure: dict[str, Any], root: Path, *, threads: int,
                    level: str) -> list[float]:
    """A federated loop's tasks on one warm runner; per task, accepted -> first step (evaluate: -> result)."""
    firsts: list[float] = []
    async with _runner(level, warm=True) as runner:
        await runner.prewarm(ENTRY)
        await runner.wait_warm(ENTRY)
        for index, kind in enumerate(SEQUENCE_KINDS):
            if index:
                await asyncio.sleep(SEQUENCE_GAP_S)
            case, request = _stage(data_path, root, _task(SMALL_EPOCHS, kind), datastructure, threads)
            _outcome, total, first_step = await _timed_run(runner, case, request)
            firsts.append(total if kind == "evaluate" else first_step)
    return firsts


def _best_level() -> str:
    from pod_agent.config.settings import SecuritySection
    from pod_agent.sandbox import best_level, probe_layers

    return best_level(probe_layers(SecuritySection(sandbox="none", sandbox_user=SANDBOX_USER)))


def run(small: bool, *, threads: int = 1, level: str | None = None) -> dict[str, Any]:
    """Plain Lightning vs a pod task on the same job, and first-step latency warm and cold."""
    epochs = SMALL_EPOCHS if small else FULL_EPOCHS
    chosen = level or _best_level()
    with tempfile.TemporaryDirectory(prefix="pod-bench-training-") as tmp:
        root = Path(tmp)
        data_path, datastructure = _prepare(root, small=small)
        plain_runs: list[float] = []
        pod_runs: list[float] = []
        first_warm_runs: list[float] = []
        for _ in range(SMALL_REPEATS if small else FULL_REPEATS):
            plain_runs.append(_plain_lightning(data_path, datastructure, epochs=epochs, threads=threads))
            pod, first_warm = asyncio.run(_pod_task(data_path, datastructure, root, epochs=epochs, threads=threads,
                                                    level=chosen, warm=True))
            pod_runs.append(pod)
            first_warm_runs.append(first_warm)
        short = 1 if not small else epochs
        _, first_cold = asyncio.run(_pod_task(data_path, datastructure, root, epochs=short, threads=threads,
                                              level=chosen, warm=False))
        sequence = asyncio.run(_sequence(data_path, datastructure, root, threads=threads, level=chosen))
    n_rows = datastructure["n_rows"]
    return {
        "level": chosen, "epochs": epochs, "threads": threads, "train_rows": n_rows["train"],
        "plain_s": round(min(plain_runs), 3), "pod_s": round(min(pod_runs), 3),
        "ratio": round(min(pod_runs) / min(plain_runs), 3),
        "plain_runs_s": [round(t, 3) for t in plain_runs], "pod_runs_s": [round(t, 3) for t in pod_runs],
        "first_step_warm_s": round(min(first_warm_runs), 3), "first_step_cold_s": round(first_cold, 3),
        "sequence_first_step_s": [round(t, 3) for t in sequence],
    }


def _print(result: dict[str, Any]) -> None:
    print(f"training overhead, tutorial MLP on Adult ({result['train_rows']} train rows, {result['epochs']} epochs, "
          f"{result['threads']} thread(s), sandbox level {result['level']})")
    print(f"(a) plain Lightning in-process: {result['plain_s']:>8.3f} s   runs {result['plain_runs_s']}")
    print(f"(b) pod task, warm worker:      {result['pod_s']:>8.3f} s   runs {result['pod_runs_s']}")
    print(f"ratio (b)/(a), fastest of each: {result['ratio']:.3f}")
    print(f"task accepted -> first training step: warm {result['first_step_warm_s']:.3f} s, "
          f"cold {result['first_step_cold_s']:.3f} s")
    print(f"federated loop {'/'.join(SEQUENCE_KINDS)}, {SEQUENCE_GAP_S} s apart, accepted -> first step "
          f"(evaluate: -> result): {result['sequence_first_step_s']} s")


def main() -> None:
    parser = parser_for(__doc__, small_help=f"{SMALL_ROWS} rows, {SMALL_EPOCHS} epoch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides (default 1)")
    parser.add_argument("--level", choices=("strict", "standard", "none"), help="sandbox level (default: best here)")
    args = parser.parse_args()
    show(run(args.small, threads=args.threads, level=args.level), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
