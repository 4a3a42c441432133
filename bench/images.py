"""Benchmark: images per second in a pod task vs plain Lightning on the same files, and adapter update sizes.

Images: the package's drawn shapes (``pod_agent.data.shapes``, 28x28 grey PNGs, three classes), the same
small convolutional model (``pod_agent.demo.media_models.SHAPE_NET``), batch 32, AdamW, same epochs and seed,
one torch thread on both sides:

- ``plain_s``: (a) in this process, what a data scientist writes by hand: a torch ``Dataset`` over the PNG
               files that opens, converts and resizes each with Pillow and scales it to [0, 1] (the
               ImageFolder pattern, without torchvision), a DataLoader, a LightningModule with the same
               layers, ``Trainer.fit`` on the training split (the pod's own split of the same files).
- ``plain_cached_s``: (a') the same, decoding every file once into tensors first (counted) and training on a
               TensorDataset, as a user with memory to spare would: the pod, too, decodes once per task.
- ``pod_s``:   (b) the agent decodes the same files into the task's prepared input (``prepare_s``, counted
               in ``pod_s``), then one train task through the SandboxRunner with a warm worker at the best
               sandbox level here, and the agent's contract check.
- ``plain_images_per_s`` / ``pod_images_per_s``: training images x epochs / seconds; ``ratio``: pod_s /
               plain_s, ``ratio_cached``: pod_s / plain_cached_s. (a), (a') and (b) alternate ``repeats``
               times; the fastest of each counts (other load only adds time). A pod decodes each image once
               per task, the plain loop (a) once per epoch.

Text (update size with adapters vs the full model): a 2-layer BERT (hidden 32) with LoRA on query and value
(``TINY_BERT_LORA``), built from its config for a 16-token byte vocabulary task: the values and float32 bytes of
the full floating state a pod would otherwise exchange, of the trainable adapters (``exchange = "trainable"``),
the adapters in bfloat16 (``wire_dtype``), and the secure-aggregation vector (8 bytes a value) of each.

    python -m bench.images [--small] [--json]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.cli import parser_for, show
from bench.training import ENTRY, _best_level, _runner, _timed_run

FULL_PER_CLASS, SMALL_PER_CLASS = 300, 40
FULL_EPOCHS, SMALL_EPOCHS = 5, 1
FULL_REPEATS, SMALL_REPEATS = 3, 1
BATCH_SIZE = 32
SEED = 7
TEXT_TOKENS = 16


def _files(root: Path, per_class: int) -> Any:
    from pod_agent.config import DatasourceSection, ImagesSection
    from pod_agent.data.shapes import write_shapes, write_shapes_table

    rows = write_shapes(root / "images", per_class=per_class)
    return DatasourceSection(path=write_shapes_table(root / "table.csv", rows),
                             images=ImagesSection(dir=root / "images"),
                             force_stypes={"image": ["image"], "text": ["caption"]})


def _selection() -> Any:
    from pod_agent.protocol import DataSelection

    return DataSelection(target="label", columns=["image"])


def _plain(section: Any, *, epochs: int, cached: bool) -> tuple[float, int]:
    """(a), or (a') ``cached``: a Dataset decoding the PNGs, plain Lightning; returns (seconds, training images)."""
    import numpy as np
    import pytorch_lightning as pl
    import torch
    from PIL import Image
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    from pod_agent.data import assign_splits, open_datasource

    torch.set_num_threads(1)
    ds = open_datasource(section)
    schema = ds.schema()
    table = next(iter(ds.batches(columns=["image", "label"], batch_rows=1 << 20)))
    classes = schema.column("label").categories or []
    train = assign_splits(ds, schema, _selection()) == 0
    paths = [p for p, keep in zip(table.column("image").to_pylist(), train, strict=True) if keep]
    labels = [classes.index(c) for c, keep in zip(table.column("label").to_pylist(), train, strict=True) if keep]
    root = section.images.dir

    class Files(Dataset[tuple[torch.Tensor, int]]):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            with Image.open(root / paths[index]) as image:
                pixels = np.asarray(image.convert("L").resize((28, 28)), dtype=np.float32) / 255.0
            return torch.from_numpy(pixels)[None], labels[index]

    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Linear(16 * 7 * 7, len(classes))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.head(self.features(x).flatten(1)), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    started = time.perf_counter()
    pl.seed_everything(SEED, verbose=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, deterministic=True, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    files: Dataset[Any] = Files()
    if cached:
        decoded = [files[i] for i in range(len(paths))]
        files = TensorDataset(torch.stack([x for x, _ in decoded]), torch.tensor([y for _, y in decoded]))
    trainer.fit(Plain(), DataLoader(files, batch_size=BATCH_SIZE, shuffle=True))
    return time.perf_counter() - started, len(paths)


def _task(epochs: int) -> Any:
    from pod_agent.demo.media_models import SHAPE_NET, SHAPE_NET_CLASS
    from pod_agent.protocol import CohortEntry, Hyperparameters, ModelRef, TaskPayload, cohort_tree, source_sha256

    now = int(time.time())
    return TaskPayload(
        task_id=str(uuid.uuid4()), modeller_id="ab" * 32, issued_at=now, expires_at=now + 3600,
        cohort=cohort_tree([CohortEntry(pod="bench", schema_hash="cd" * 32, key_id="ab" * 32)]).commitment,
        nonce=uuid.uuid4().hex, kind="train",
        model=ModelRef(style="module", name="shapes", class_name=SHAPE_NET_CLASS, source=SHAPE_NET,
                       sha256=source_sha256(SHAPE_NET)),
        hyperparameters=Hyperparameters(epochs=epochs, batch_size=BATCH_SIZE, seed=SEED), data=_selection(),
    )


async def _pod(section: Any, root: Path, *, epochs: int, level: str) -> tuple[float, float, int]:
    """(b): prepare (decode) and one warm train task; returns (total seconds, prepare seconds, training images)."""
    from pod_agent.data import open_datasource, prepare_task_input
    from pod_agent.training import TensorSpec, check_result, initial_weights, reported_rows

    task = _task(epochs)
    case = root / uuid.uuid4().hex[:8]
    async with _runner(level, warm=True, warm_pool=1) as runner:
        await runner.prewarm(ENTRY)
        await runner.wait_warm(ENTRY)
        started = time.perf_counter()
        ds = open_datasource(section)
        prepared = prepare_task_input(ds, ds.schema(), task.data, case / "input", share_categories=False)
        prepare_s = time.perf_counter() - started
        # The modeller's starting weights (what the contract checks against) are not the pod's cost.
        starting = initial_weights(task.model, datastructure=prepared.datastructure,
                                   hyperparameters=task.hyperparameters)
        (case / "input" / "model.py").write_text(task.model.source)
        request = {"task": task.model_dump(mode="json"), "datastructure": prepared.datastructure,
                   "trainer": {"accelerator": "cpu", "devices": 1, "threads": 1}, "privacy": {"min_rows": 1}}
        started = time.perf_counter()
        outcome, _total, _first = await _timed_run(runner, case, request)
        rows = reported_rows(task, prepared.datastructure["n_rows"])  # type: ignore[arg-type]
        check_result(outcome, task=task, expected={n: TensorSpec(tuple(a.shape)) for n, a in starting.items()},
                     rows=rows, max_bytes=512 << 20)
        return prepare_s + time.perf_counter() - started, prepare_s, rows


def _update_sizes() -> dict[str, Any]:
    """Values and bytes a LoRA text task exchanges, against the full model's floating state."""
    import numpy as np
    import torch
    from safetensors.numpy import save
    from safetensors.torch import save as save_torch

    from pod_agent.demo.media_models import TINY_BERT_LORA, TINY_BERT_LORA_CLASS
    from pod_agent.protocol import Hyperparameters, ModelRef, source_sha256
    from pod_agent.training import initial_weights

    model = ModelRef(style="module", name="bert", class_name=TINY_BERT_LORA_CLASS, source=TINY_BERT_LORA,
                     sha256=source_sha256(TINY_BERT_LORA))
    structure = {"target": "label", "input_size": TEXT_TOKENS, "n_classes": 3, "input_kind": "tokens",
                 "vocab_size": 258}
    hp = Hyperparameters(epochs=1, exchange="trainable")
    adapters = initial_weights(model, datastructure=structure, hyperparameters=hp)
    full = initial_weights(model, datastructure=structure, hyperparameters=hp.model_copy(update={"exchange": "all"}))
    half = save_torch({n: torch.from_numpy(a).to(torch.bfloat16) for n, a in adapters.items()})
    full_values, adapter_values = sum(a.size for a in full.values()), sum(a.size for a in adapters.values())
    return {
        "full_values": full_values, "adapter_values": adapter_values, "adapter_tensors": len(adapters),
        "full_f32_bytes": len(save({n: np.ascontiguousarray(a) for n, a in full.items()})),
        "adapter_f32_bytes": len(save({n: np.ascontiguousarray(a) for n, a in adapters.items()})),
        "adapter_bf16_bytes": len(half),
        "full_masked_bytes": 8 * full_values, "adapter_masked_bytes": 8 * adapter_values,
        "reduction": round(full_values / adapter_values, 1),
    }


def run(small: bool) -> dict[str, Any]:
    """Plain Lightning vs a pod task on the same image files, then the LoRA update sizes."""
    per_class = SMALL_PER_CLASS if small else FULL_PER_CLASS
    epochs = SMALL_EPOCHS if small else FULL_EPOCHS
    level = _best_level()
    plain_runs: list[float] = []
    cached_runs: list[float] = []
    pod_runs: list[float] = []
    prepare_runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pod-bench-images-") as tmp:
        root = Path(tmp)
        section = _files(root, per_class)
        for _ in range(SMALL_REPEATS if small else FULL_REPEATS):
            plain_s, train_images = _plain(section, epochs=epochs, cached=False)
            plain_runs.append(plain_s)
            cached_runs.append(_plain(section, epochs=epochs, cached=True)[0])
            pod_s, prepare_s, pod_images = asyncio.run(_pod(section, root, epochs=epochs, level=level))
            pod_runs.append(pod_s)
            prepare_runs.append(prepare_s)
    seen = train_images * epochs
    return {
        "level": level, "images": per_class * 3, "train_images": train_images, "epochs": epochs,
        "same_split": pod_images == train_images,
        "plain_s": round(min(plain_runs), 3), "pod_s": round(min(pod_runs), 3),
        "prepare_s": round(min(prepare_runs), 3), "ratio": round(min(pod_runs) / min(plain_runs), 3),
        "plain_cached_s": round(min(cached_runs), 3), "ratio_cached": round(min(pod_runs) / min(cached_runs), 3),
        "plain_images_per_s": round(seen / min(plain_runs), 1), "pod_images_per_s": round(seen / min(pod_runs), 1),
        "plain_cached_images_per_s": round(seen / min(cached_runs), 1),
        "plain_runs_s": [round(t, 3) for t in plain_runs], "pod_runs_s": [round(t, 3) for t in pod_runs],
        "plain_cached_runs_s": [round(t, 3) for t in cached_runs],
        "text_update": _update_sizes(),
    }


def _print(result: dict[str, Any]) -> None:
    print(f"images: {result['train_images']} training images of 28x28 ({result['images']} drawn), "
          f"{result['epochs']} epoch(s), batch {BATCH_SIZE}, 1 thread, sandbox level {result['level']}")
    print(f"(a) plain Lightning, Pillow Dataset:  {result['plain_s']:>8.3f} s  {result['plain_images_per_s']:>8.1f} "
          f"images/s   runs {result['plain_runs_s']}")
    print(f"(a') the same, decoded once first: {result['plain_cached_s']:>8.3f} s  "
          f"{result['plain_cached_images_per_s']:>8.1f} images/s   runs {result['plain_cached_runs_s']}")
    print(f"(b) pod task (decode {result['prepare_s']:.3f} s + warm worker): {result['pod_s']:>8.3f} s  "
          f"{result['pod_images_per_s']:>8.1f} images/s   runs {result['pod_runs_s']}")
    print(f"ratio (b)/(a), fastest of each: {result['ratio']:.3f}; (b)/(a'): {result['ratio_cached']:.3f}")
    text = result["text_update"]
    print(f"text, tiny BERT + LoRA: full model {text['full_values']} values ({text['full_f32_bytes']} B float32, "
          f"{text['full_masked_bytes']} B masked); adapters {text['adapter_values']} values in "
          f"{text['adapter_tensors']} tensors ({text['adapter_f32_bytes']} B float32, {text['adapter_bf16_bytes']} B "
          f"bfloat16, {text['adapter_masked_bytes']} B masked): {text['reduction']}x fewer values")


def main() -> None:
    parser = parser_for(__doc__, small_help=f"{SMALL_PER_CLASS * 3} images, {SMALL_EPOCHS} epoch")
    args = parser.parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
