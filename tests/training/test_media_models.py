"""Image and text models train on real prepared input: a small convolutional module on drawn shapes, and a tiny
BERT fine-tuned with LoRA whose update is its adapters alone, in bfloat16 when the task asks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from media_support import PROBING_SHAPE_NET_CLASS, probing_shape_net
from safetensors.numpy import save as save_numpy
from safetensors.torch import save as save_torch
from training_support import make_task, source_ref

from pod_agent.config import DatasourceSection, ImagesSection
from pod_agent.data import open_datasource, prepare_task_input
from pod_agent.data.shapes import CAPTION_WORDS, write_shapes, write_shapes_table
from pod_agent.demo.media_models import SHAPE_NET, SHAPE_NET_CLASS, TINY_BERT_LORA, TINY_BERT_LORA_CLASS
from pod_agent.errors import ContractViolation, TrainingError
from pod_agent.protocol import DataSelection, Hyperparameters
from pod_agent.protocol.messages import Split
from pod_agent.training import TensorSpec, check_result, fit_local, initial_weights

SPLIT = Split(train=60, validation=20, test=20)
IMAGES = DataSelection(target="label", columns=["image"], split=SPLIT)
CAPTIONS = DataSelection(target="label", columns=["caption"], max_tokens=8, vocabulary=list(CAPTION_WORDS), split=SPLIT)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> DatasourceSection:
    root = tmp_path_factory.mktemp("media")
    rows = write_shapes(root / "images", per_class=80)
    return DatasourceSection(path=write_shapes_table(root / "table.csv", rows),
                             images=ImagesSection(dir=root / "images"),
                             force_stypes={"image": ["image"], "text": ["caption"]})


def test_a_convolutional_module_learns_the_shapes_from_their_pixels(media: DatasourceSection) -> None:
    fit = fit_local(source_ref(SHAPE_NET, SHAPE_NET_CLASS, style="module"), data=media, selection=IMAGES,
                    hyperparameters=Hyperparameters(epochs=10, batch_size=16, learning_rate=0.01), accelerator="cpu")
    assert fit.datastructure["image_shape"] == [1, 28, 28]
    assert fit.metrics["val_accuracy"] >= 0.75, fit.metrics  # three classes: chance is 0.33


def test_the_file_probing_model_fails_its_task_where_a_file_is_readable(
    media: DatasourceSection, tmp_path: Path
) -> None:
    # The control for the sandboxed e2e test (tests/e2e/test_media_federation.py): unconfined, on the host, the
    # probe reads the owner's image file and fails the task; in a pod at level strict the same task completes.
    image = next(media.images.dir.rglob("*.png"))  # type: ignore[union-attr]
    model = source_ref(probing_shape_net([str(tmp_path / "absent"), str(image)]), PROBING_SHAPE_NET_CLASS,
                       style="module")
    with pytest.raises(TrainingError, match=r"forward_error.*RuntimeError\('read \d+ bytes of") as failed:
        fit_local(model, data=media, selection=IMAGES, hyperparameters=Hyperparameters(epochs=1, batch_size=16),
                  accelerator="cpu")
    assert failed.value.code == "forward_error"


def test_a_lora_fine_tune_exchanges_only_its_adapters_in_bfloat16(media: DatasourceSection, tmp_path: Path) -> None:
    model = source_ref(TINY_BERT_LORA, TINY_BERT_LORA_CLASS, style="module")
    hp = Hyperparameters(epochs=10, batch_size=16, learning_rate=0.05, exchange="trainable", wire_dtype="bfloat16")
    ds = open_datasource(media)
    structure = prepare_task_input(ds, ds.schema(), CAPTIONS, tmp_path, share_categories=False).datastructure
    pinned = initial_weights(model, datastructure=structure, hyperparameters=hp)
    everything = initial_weights(model, datastructure=structure,
                                 hyperparameters=hp.model_copy(update={"exchange": "all"}))
    # The pinned weights are the adapters (LoRA A/B and the classifier copy peft trains), a small part of the model.
    assert pinned and all(".lora_" in name or ".modules_to_save." in name for name in pinned)
    assert set(pinned) < set(everything)
    adapter_values = sum(a.size for a in pinned.values())
    assert adapter_values * 10 < sum(a.size for a in everything.values())
    weights = tmp_path / "pinned.safetensors"
    weights.write_bytes(save_numpy(pinned))
    fit = fit_local(model, data=media, selection=CAPTIONS, hyperparameters=hp, weights=weights, accelerator="cpu")
    assert set(fit.weights) == set(pinned)
    assert {t.dtype for t in fit.weights.values()} == {torch.bfloat16}
    assert fit.metrics["val_accuracy"] >= 0.8, fit.metrics
    # Pinned names that are not exactly the trainable ones (here a frozen base tensor too) fail the task.
    base = next(name for name in everything if name not in pinned)
    weights.write_bytes(save_numpy({**pinned, base: everything[base]}))
    with pytest.raises(TrainingError, match="pretrained names differ from the model") as mismatch:
        fit_local(model, data=media, selection=CAPTIONS, hyperparameters=hp, weights=weights, accelerator="cpu")
    assert mismatch.value.code == "weights_mismatch"


@dataclass(frozen=True)
class _Outcome:
    header: dict[str, Any]
    payload: bytes


def _bf16_outcome(arrays: dict[str, torch.Tensor]) -> _Outcome:
    described = {n: {"shape": list(a.shape), "dtype": "BF16"} for n, a in arrays.items()}
    return _Outcome({"metrics": {}, "n_rows": 10, "tensors": described},
                    save_torch({n: a.contiguous() for n, a in arrays.items()}))


def test_a_half_precision_update_passes_the_contract_only_where_the_owner_allows_it_and_widens_to_float32() -> None:
    task = make_task("train", source_ref(SHAPE_NET, SHAPE_NET_CLASS, style="module"), wire_dtype="bfloat16")
    update = {"w": torch.tensor([[0.5, -1.25, 3.0]], dtype=torch.bfloat16),
              "b": torch.tensor([1e-3], dtype=torch.bfloat16)}
    expected = {"w": TensorSpec((1, 3)), "b": TensorSpec((1,))}
    options = {"task": task, "expected": expected, "rows": 10, "max_bytes": 1 << 20}
    with pytest.raises(ContractViolation, match="does not allow half precision") as refused:
        check_result(_bf16_outcome(update), **options)
    assert refused.value.code == "bad_dtype"
    checked = check_result(_bf16_outcome(update), allow_half_precision=True, **options)
    assert {a.dtype for a in checked.arrays.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(checked.arrays["w"], update["w"].float().numpy())
    assert math.isclose(float(checked.arrays["b"][0]), float(update["b"][0]))
    with pytest.raises(ContractViolation, match="holds NaN or infinite values") as poisoned:
        check_result(_bf16_outcome({**update, "b": torch.tensor([math.nan], dtype=torch.bfloat16)}),
                     allow_half_precision=True, **options)
    assert poisoned.value.code == "non_finite"
    # A float32 payload under a task that asked for bfloat16 is not what was declared either.
    float_task = {**options, "task": make_task("train", source_ref(SHAPE_NET, SHAPE_NET_CLASS, style="module"))}
    with pytest.raises(ContractViolation, match="only F32 is accepted") as wrong:
        check_result(_bf16_outcome(update), allow_half_precision=True, **float_task)
    assert wrong.value.code == "bad_dtype"
