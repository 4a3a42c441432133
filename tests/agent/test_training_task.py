"""A real train task through the daemon: data -> sandbox(training.worker) -> contract -> result.

Under secure aggregation the update leaves only through a SecAgg+ round: tests/agent/test_secure_round.py
and tests/e2e/test_secure_fedavg.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_support import hub_with_agent
from safetensors.numpy import load, save_file
from task_support import cohort_of, entries

from pod_agent.modeller import ModellerClient, VerifiedResult, build_task
from pod_agent.modeller.weights import starting_weights
from pod_agent.protocol import source_sha256, spec_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
    "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1,
}

# 1500 rows: the default 80/10/10 split (random per row) keeps validation and test well over the
# floor's min_rows of 100.
TRAINING_CSV = "age,hours,TARGET\n" + "".join(
    f"{20 + i % 40},{i % 60},{'>50K' if (i % 40) > 20 else '<=50K'}\n" for i in range(1500))
# One pod cannot aggregate securely; this owner lets the modeller have the plain update (the rest of the
# floor stays at its defaults).
PLAIN_UPDATES = {"require_secure_aggregation": False}
LINEAR = ModelRef(style="declarative", name="linear", spec=SPEC, sha256=spec_sha256(SPEC))
SELECTION = DataSelection(target="TARGET")


@pytest.fixture
async def hub_and_pod(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[ModellerClient, Any]]:
    """A hub and one agent; ``indirect`` params: ``policy`` (ModellerPolicy fields), ``security`` (section fields)."""
    options: dict[str, Any] = {"privacy": PLAIN_UPDATES} | getattr(request, "param", {})
    async with hub_with_agent(tmp_path, TRAINING_CSV, **options) as rig:
        yield rig.modeller, rig.pod


async def _task(
    modeller: ModellerClient, pod: Any, kind: str = "train", *, epochs: int = 1, model: ModelRef = LINEAR,
    work_dir: Path, **fields: Any,
) -> Any:
    """A task of ``kind``; a train task pins starting weights (the model freshly built) unless given."""
    hyperparameters = Hyperparameters(epochs=epochs, batch_size=32)
    if kind == "train" and "weights" not in fields:
        fields["weights"] = await starting_weights(
            modeller, model=model, cohort=[pod], selection=SELECTION, hyperparameters=hyperparameters,
            weights_file=None, work_dir=work_dir,
        )
    return build_task(
        modeller_id=modeller.key.key_id, cohort=entries(["pod-a"], pod.schema_hash), kind=kind,  # type: ignore[arg-type]
        model=model, data=SELECTION, hyperparameters=hyperparameters, **fields,
    )


async def _not_a_model_task(modeller: ModellerClient, pod: Any, work_dir: Path) -> Any:
    source = "class M: pass\n"
    # No model to build starting weights from: any pinned weights do, the worker fails before using them.
    path = work_dir / "any.safetensors"
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(path))
    return await _task(
        modeller, pod, model=ModelRef(style="module", name="m", class_name="M", source=source,
                                      sha256=source_sha256(source)),
        weights=await modeller.upload_weights(path), work_dir=work_dir,
    )


async def _outcome(modeller: ModellerClient, task: Any) -> VerifiedResult | str:
    await modeller.submit_task(task, cohort_of(task))
    return (await modeller.wait_results(task.task_id, ["pod-a"], timeout_s=120))["pod-a"]


async def test_declarative_model_trains_in_the_sandbox_and_the_update_comes_back(
    hub_and_pod: tuple[ModellerClient, Any], tmp_path: Path
) -> None:
    modeller, pod = hub_and_pod
    result = await _outcome(modeller, await _task(modeller, pod, work_dir=tmp_path))
    assert isinstance(result, VerifiedResult), result
    assert result.payload.status == "done", result.payload.reason
    assert result.payload.blob is not None and result.payload.blob.encoding == "safetensors"
    path = await modeller.download_blob(result.payload.blob.sha256, tmp_path / "update.safetensors")
    update = load(path.read_bytes())
    assert len(update) == 2 and all(name.endswith(("weight", "bias")) for name in update)
    assert all(np.isfinite(a).all() and np.abs(a).sum() > 0 for a in update.values())
    assert result.payload.n_rows > 0



async def test_bad_model_fails_with_the_workers_fixed_reason(
    hub_and_pod: tuple[ModellerClient, Any], tmp_path: Path
) -> None:
    modeller, pod = hub_and_pod
    result = await _outcome(modeller, await _not_a_model_task(modeller, pod, tmp_path))
    assert isinstance(result, VerifiedResult) and result.payload.status == "failed"
    assert result.payload.reason == "wrong_base_class"


async def test_evaluate_returns_metrics_only_and_predict_needs_the_owners_permission(
    hub_and_pod: tuple[ModellerClient, Any], tmp_path: Path
) -> None:
    modeller, pod = hub_and_pod
    evaluated = await _outcome(modeller, await _task(modeller, pod, "evaluate", work_dir=tmp_path))
    assert isinstance(evaluated, VerifiedResult) and evaluated.payload.status == "done", evaluated
    assert evaluated.payload.blob is None and evaluated.payload.n_rows > 0
    assert {"test_loss", "test_accuracy"} <= set(evaluated.payload.metrics), evaluated.payload.metrics
    refused = await _outcome(modeller, await _task(modeller, pod, "predict", work_dir=tmp_path))
    reason = refused.payload.reason if isinstance(refused, VerifiedResult) else refused
    assert reason == "predict_not_permitted"
    # The default keeps no sandbox stderr on the host either.
    assert not (tmp_path / "pod" / "sandbox-stderr").exists()


PREDICT_AND_KEEP_STDERR = {"policy": {"kinds": ["train", "evaluate", "predict"], "allow_predict": True},
                           "security": {"keep_sandbox_stderr": True}, "privacy": PLAIN_UPDATES}


@pytest.mark.parametrize("hub_and_pod", [PREDICT_AND_KEEP_STDERR], indirect=True)
async def test_trained_weights_evaluate_and_predict_through_the_hub(
    hub_and_pod: tuple[ModellerClient, Any], tmp_path: Path
) -> None:
    modeller, pod = hub_and_pod
    trained = await _outcome(modeller, await _task(modeller, pod, epochs=15, returns="weights", work_dir=tmp_path))
    assert isinstance(trained, VerifiedResult) and trained.payload.blob is not None, trained
    weights = await modeller.upload_weights(
        await modeller.download_blob(trained.payload.blob.sha256, tmp_path / "trained.safetensors"))

    evaluated = await _outcome(modeller, await _task(modeller, pod, "evaluate", weights=weights, work_dir=tmp_path))
    assert isinstance(evaluated, VerifiedResult) and evaluated.payload.status == "done", evaluated
    # The target is a threshold on age: a linear model trained on it beats the 50 % of chance.
    assert evaluated.payload.metrics["test_accuracy"] > 0.7, evaluated.payload.metrics

    predicted = await _outcome(modeller, await _task(modeller, pod, "predict", weights=weights, work_dir=tmp_path))
    assert isinstance(predicted, VerifiedResult) and predicted.payload.status == "done", predicted
    assert predicted.payload.blob is not None and predicted.payload.blob.encoding == "safetensors"
    blob = await modeller.download_blob(predicted.payload.blob.sha256, tmp_path / "predictions.safetensors")
    arrays = load(blob.read_bytes())
    assert list(arrays) == ["predictions"]
    assert arrays["predictions"].shape == (predicted.payload.n_rows, 2) and predicted.payload.n_rows >= 20
    assert np.isfinite(arrays["predictions"]).all()


@pytest.mark.parametrize("hub_and_pod", [PREDICT_AND_KEEP_STDERR], indirect=True)
async def test_a_failing_models_stderr_is_kept_on_the_host_when_the_owner_asks(
    hub_and_pod: tuple[ModellerClient, Any], tmp_path: Path
) -> None:
    modeller, pod = hub_and_pod
    task = await _not_a_model_task(modeller, pod, tmp_path)
    failed = await _outcome(modeller, task)
    assert isinstance(failed, VerifiedResult) and failed.payload.reason == "wrong_base_class"
    kept = tmp_path / "pod" / "sandbox-stderr" / f"{task.task_id}.log"
    assert "pod-agent worker:" in kept.read_text()
    assert kept.stat().st_mode & 0o777 == 0o600
