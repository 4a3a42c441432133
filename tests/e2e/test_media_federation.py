"""Image and text tasks end to end: an embedded hub, three real pod processes at sandbox level strict under the
owner's privacy floor (secure aggregation required), real sandboxed training, secure FedAvg rounds.

The image model also tries to read image files and a canary outside the pod's images directory from inside
the sandbox (absolute paths, ``..``, a symlink the owner's directory holds); it fails its task if any read
succeeds, so a round that completes proves it got nothing (the same model run on the host, unconfined, fails:
``tests/training/test_media_models.py``). The text model is a tiny BERT with LoRA: the round's masked vectors and
the new global weights hold the adapters alone, sent in bfloat16.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from media_support import PROBING_SHAPE_NET_CLASS, probing_shape_net

from pod_agent.data.shapes import CAPTION_WORDS, write_shapes, write_shapes_table
from pod_agent.demo import LocalFederation, PodSite
from pod_agent.demo.media_models import TINY_BERT_LORA, TINY_BERT_LORA_CLASS
from pod_agent.modeller import FedAvg, FedAvgPlan, ModellerClient, SecureSettings
from pod_agent.protocol import DataSelection, IdentityKey, ModelRef, source_sha256
from pod_agent.protocol.messages import Split
from pod_agent.secagg import Layout

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PODS = ("pod-a", "pod-b", "pod-c")  # SecAgg+ needs three: each pod's neighbours must reach the threshold
SPLIT = Split(train=60, validation=20, test=20)
SECURE = SecureSettings(metrics=("train_loss",))
# The owner's floor, in force: secure aggregation required (the default), a cohort of three pinned pods,
# batches of 32 or more, every split of 16 rows or more; half-precision updates allowed.
FLOOR_TOML = """
[privacy]
min_pods = 3
min_rows = 16
allow_half_precision = true

[sandbox_limits]
warm_pool = 1

[datasource.text]
max_tokens = 16
"""


@dataclass(frozen=True)
class MediaFederation:
    client: ModellerClient
    probes: list[str]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def federation(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MediaFederation]:
    root = tmp_path_factory.mktemp("media-federation")
    canary = root / "canary.png"
    canary.write_bytes(b"not for the model")
    sites, probes = [], [str(canary)]
    for seed, name in enumerate(PODS):
        images = root / name / "images"
        rows = write_shapes(images, per_class=30, seed=seed)
        os.symlink(canary, images / "circle" / "planted-link.png")
        probes += [str(images / rows[0][0]), str(images / ".." / "canary.png"),
                   str(images / "circle" / "planted-link.png")]
        table = write_shapes_table(root / name / "table.csv", rows, seed=seed)
        sites.append(PodSite(
            name=name, data=table, force_stypes={"image": ["image"], "text": ["caption"]},
            extra_toml=FLOOR_TOML + f'\n[datasource.images]\ndir = "{images}"\n',
        ))
    modeller = IdentityKey.generate()
    async with (
        LocalFederation(root, sites, modeller=modeller, sandbox="strict") as local,
        ModellerClient(local.hub_url, modeller) as client,
    ):
        yield MediaFederation(client, probes)


def _plan(model: ModelRef, selection: DataSelection, **options: object) -> FedAvgPlan:
    return FedAvgPlan(model=model, pods=list(PODS), selection=selection, rounds=1, batch_size=32, min_pods=3,
                      secure=SECURE, cohort_scaling=False, **options)  # type: ignore[arg-type]


async def _run(fed: MediaFederation, plan: FedAvgPlan, work: Path) -> dict[str, np.ndarray]:
    return (await FedAvg(fed.client, plan, work_dir=work).run()).weights


def _ref(source: str, class_name: str) -> ModelRef:
    return ModelRef(style="module", name=class_name, class_name=class_name, source=source, sha256=source_sha256(source))


async def test_an_image_task_trains_securely_and_its_model_reads_no_image_file_and_nothing_outside(
    federation: MediaFederation, tmp_path: Path
) -> None:
    source = probing_shape_net(federation.probes)
    selection = DataSelection(target="label", columns=["image"], image_size=(28, 28), image_mode="L", split=SPLIT)
    plan = _plan(_ref(source, PROBING_SHAPE_NET_CLASS), selection, learning_rate=0.01)
    weights = await _run(federation, plan, tmp_path)
    assert sorted(weights) == ["_model.features.0.bias", "_model.features.0.weight", "_model.features.3.bias",
                               "_model.features.3.weight", "_model.head.bias", "_model.head.weight"]
    assert all(np.isfinite(a).all() for a in weights.values())


async def test_a_lora_text_task_aggregates_only_the_adapters_in_bfloat16(
    federation: MediaFederation, tmp_path: Path
) -> None:
    selection = DataSelection(target="label", columns=["caption"], max_tokens=8, vocabulary=list(CAPTION_WORDS),
                              split=SPLIT)
    plan = _plan(_ref(TINY_BERT_LORA, TINY_BERT_LORA_CLASS), selection, learning_rate=0.05, epochs_per_round=2,
                 exchange="trainable", wire_dtype="bfloat16")
    weights = await _run(federation, plan, tmp_path)
    assert weights and all(".lora_" in name or ".modules_to_save." in name for name in weights)
    # What the hub and the modeller held of each pod: a masked vector of exactly the adapters, the metric and
    # the row count, nothing of the frozen base.
    layout = Layout.from_arrays(weights, SECURE.metrics)
    for pod in PODS:
        (blob,) = tmp_path.glob(f"*.{pod}.blob")
        assert blob.stat().st_size == 8 * layout.size
    assert layout.n_values < 2000  # the base model holds ~30,000 values
