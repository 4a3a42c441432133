"""A modeller's DP budget enforced by a real pod through a real hub: the first train release is noised and
charged, the next one past the budget is refused ``privacy_budget_exhausted``, exact releases are refused."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_support import hub_with_agent
from safetensors.numpy import load
from task_support import cohort_of, entries

from pod_agent.modeller import ModellerClient, VerifiedResult, build_task
from pod_agent.modeller.weights import starting_weights
from pod_agent.protocol import spec_sha256
from pod_agent.protocol.messages import DataSelection, DpParams, Hyperparameters, ModelRef

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
    "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1,
}
LINEAR = ModelRef(style="declarative", name="linear", spec=SPEC, sha256=spec_sha256(SPEC))
SELECTION = DataSelection(target="TARGET")
CSV = "age,hours,TARGET\n" + "".join(f"{20 + i % 40},{i % 60},{'>50K' if (i % 40) > 20 else '<=50K'}\n"
                                     for i in range(1500))
CLIP = 0.5
# One release at z = 2 costs epsilon 1.88 at delta 1e-4 (RDP); two cost 2.79: a budget of 2.5 admits one.
OWNER_PRIVACY = {
    "require_secure_aggregation": False, "max_clip_norm": CLIP, "dp": {"min_noise_multiplier": 2.0},
}
BUDGET = {"dp": {"epsilon": 2.5, "delta": 1e-4}}


async def _train(modeller: ModellerClient, pod: Any, work_dir: Path, **fields: Any) -> Any:
    hyperparameters = Hyperparameters(epochs=1, batch_size=32)
    weights = await starting_weights(
        modeller, model=LINEAR, cohort=[pod], selection=SELECTION, hyperparameters=hyperparameters,
        weights_file=None, work_dir=work_dir,
    )
    return build_task(
        modeller_id=modeller.key.key_id, cohort=entries(["pod-a"], pod.schema_hash), kind="train",
        model=LINEAR, data=SELECTION, hyperparameters=hyperparameters, weights=weights, **fields,
    )


async def _outcome(modeller: ModellerClient, task: Any) -> VerifiedResult:
    await modeller.submit_task(task, cohort_of(task))
    result = (await modeller.wait_results(task.task_id, ["pod-a"], timeout_s=120))["pod-a"]
    assert isinstance(result, VerifiedResult), result
    return result


async def test_the_pod_noises_charges_and_then_refuses_past_the_modellers_budget(tmp_path: Path) -> None:
    async with hub_with_agent(tmp_path, CSV, policy=BUDGET, privacy=OWNER_PRIVACY) as rig:
        modeller, pod = rig.modeller, rig.pod
        # The task asks for almost no noise and a loose clip: the pod applies its own floor all the same.
        first = await _outcome(modeller, await _train(
            modeller, pod, tmp_path, dp=DpParams(noise_multiplier=0.01, clip_norm=100.0)))
        assert first.payload.status == "done", first.payload.reason
        assert first.payload.metrics == {}  # train metrics are exact: they stay on the pod under DP
        assert first.payload.blob is not None
        path = await modeller.download_blob(first.payload.blob.sha256, tmp_path / "update.safetensors")
        values = np.concatenate([a.reshape(-1) for a in load(path.read_bytes()).values()]).astype(np.float64)
        # Clipped to L2 norm 0.5 and noised with std z * 2C = 2.0 per value: the norm is far beyond the clip.
        assert np.linalg.norm(values) > 4 * CLIP

        second = await _outcome(modeller, await _train(modeller, pod, tmp_path))
        assert (second.payload.status, second.payload.reason) == ("refused", "privacy_budget_exhausted")

        evaluate = build_task(
            modeller_id=modeller.key.key_id, cohort=entries(["pod-a"], pod.schema_hash), kind="evaluate",
            model=LINEAR, data=SELECTION,
        )
        refused = await _outcome(modeller, evaluate)
        assert (refused.payload.status, refused.payload.reason) == ("refused", "unaccounted_release")

    with closing(sqlite3.connect(tmp_path / "pod" / "state.sqlite")) as db:
        ledger = db.execute("SELECT task_id, status, event_json FROM dp_ledger").fetchall()
    assert [(task_id, status) for task_id, status, _ in ledger] == [(first.payload.task_id, "charged")]
    assert '"noise_multiplier": 2.0' in ledger[0][2]
