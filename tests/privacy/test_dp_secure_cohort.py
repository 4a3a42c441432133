"""DP under secure aggregation with three real pod processes: each pod adds its share of the noise variance
(split over the honest pods a sum surely holds), the unmasked mean carries at least the full noise, every
pod charges its ledger at release, and a next round past the budget is refused by every pod."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pod_agent.demo.federation import LocalFederation
from pod_agent.demo.scenario import DP_BOUND, DP_CLIP, DP_SECURE, MODEL_CLASS, MODEL_SOURCE, dp_pod_toml, prepare_sites
from pod_agent.modeller import VerifiedResult, build_task
from pod_agent.modeller.client import ModellerClient
from pod_agent.modeller.fedavg import DpTarget, FedAvg, FedAvgPlan
from pod_agent.modeller.weights import publish_weights
from pod_agent.protocol import IdentityKey, source_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, SecAggParams

pytestmark = pytest.mark.slow

EPSILON = 4.0


def test_three_pods_share_the_noise_charge_the_release_and_refuse_the_next_round(tmp_path: Path) -> None:
    modeller_toml, owner_toml = dp_pod_toml(EPSILON)
    sites = [replace(site, modeller_toml=modeller_toml, extra_toml=owner_toml)
             for site in prepare_sites(tmp_path / "data", first_rows=6000)]
    modeller = IdentityKey.generate()
    source = MODEL_SOURCE.read_text()
    model = ModelRef(style="lightning", name="adult-mlp", class_name=MODEL_CLASS, source=source,
                     sha256=source_sha256(source))
    selection = DataSelection(target="TARGET", categorical_encoding="hashed")
    names = [s.name for s in sites]
    # One round spends the whole budget; no exact releases (no schema-stats, no evaluation).
    plan = FedAvgPlan(model=model, pods=names, selection=selection, rounds=1, batch_size=128, learning_rate=5e-3,
                      secure=DP_SECURE, dp=DpTarget(epsilon=EPSILON, delta=1e-5, clip_norm=DP_CLIP))

    async def run() -> tuple[float, dict[str, object]]:
        async with (
            LocalFederation(tmp_path, sites, modeller=modeller, sandbox="none") as fed,
            ModellerClient(fed.hub_url, modeller) as client,
        ):
            fedavg = FedAvg(client, plan, work_dir=tmp_path / "rounds")
            assert fedavg.dp is not None
            result = await fedavg.run()
            # A next round from the new weights: each pod refuses it before anything is trained.
            weights = await publish_weights(client, result.weights, tmp_path / "next.safetensors")
            cohort = await client.cohort(names)
            task = build_task(
                modeller_id=modeller.key_id, cohort=cohort, kind="train", model=model, data=fedavg.selection,
                weights=weights,
                hyperparameters=Hyperparameters(epochs=1, batch_size=128), dp=fedavg.dp,
                secagg=SecAggParams(prime_q=DP_SECURE.prime_q, precision=DP_SECURE.precision, num_workers=3,
                                    clip_norm=DP_CLIP,
                                    weighted=False, round=2),
            )
            await client.submit_task(task, cohort)
            answers = await client.wait_results(task.task_id, names, timeout_s=60)
            return fedavg.dp.noise_multiplier, dict(answers)

    noise_multiplier, answers = asyncio.run(run())
    for pod, answer in answers.items():
        reason = answer.payload.reason if isinstance(answer, VerifiedResult) else answer
        assert reason == "privacy_budget_exhausted", (pod, answer)

    before = load_file(str(tmp_path / "rounds" / "global-round1.safetensors"))
    after = load_file(str(tmp_path / "rounds" / "global-round1-result.safetensors"))
    mean = np.concatenate([(after[name] - before[name]).ravel() for name in sorted(before)]).astype(np.float64)
    # Three honest pods, but a sum the modeller may cut to the threshold t = 2: each pod adds sigma^2 / 2, so
    # the three shares sum to 3 sigma^2 / 2 and the mean of three pods has std sigma sqrt(3/2) / 3. The
    # pods' own updates (L2 norm <= C each) add at most C^2 / n to the variance per value.
    sigma = noise_multiplier * 2 * DP_CLIP
    expected = sigma * math.sqrt(3 / 2) / 3
    assert mean.size > 1000 and np.abs(mean).max() < DP_BOUND
    assert mean.std() == pytest.approx(expected, rel=8 * math.sqrt(2 / mean.size) + DP_CLIP**2 / mean.size)

    for site in sites:
        with closing(sqlite3.connect(tmp_path / "pods" / site.name / "state.sqlite")) as db:
            statuses = [row[0] for row in db.execute("SELECT status FROM dp_ledger ORDER BY id")]
        assert statuses == ["charged"], (site.name, statuses)
