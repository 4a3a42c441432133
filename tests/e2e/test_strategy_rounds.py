"""Each family of strategies end to end: an embedded hub, three real pod processes, real sandboxed training.

A server optimiser (FedAdam) with FedProx's term under secure aggregation; SCAFFOLD under secure aggregation for two
rounds (the server's control variate travels in the task, each pod's change of its own comes back inside the
masked vector, and each pod keeps its own in its state between the rounds); a robust aggregate (median) in a
plain round.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pod_agent.demo.federation import LocalFederation
from pod_agent.demo.scenario import MODEL_CLASS, MODEL_SOURCE, prepare_sites
from pod_agent.modeller.client import ModellerClient
from pod_agent.modeller.fedavg import FedAvg, FedAvgPlan, FedAvgResult, SecureSettings
from pod_agent.modeller.strategies import STRATEGIES, Strategy
from pod_agent.protocol import IdentityKey, source_sha256
from pod_agent.protocol.messages import DataSelection, ModelRef

pytestmark = pytest.mark.slow

# Plain rounds allowed (for the median), and small splits (fewer rows train faster).
OWNER_TOML = "[privacy]\nrequire_secure_aggregation = false\nmin_rows = 20\n"


def _plan(pods: list[str], strategy: Strategy, *, rounds: int, secure: bool, seed: int) -> FedAvgPlan:
    source = MODEL_SOURCE.read_text()
    # SCAFFOLD's control variates assume SGD steps: that run trains the same network stepped by SGD.
    class_name = "AdultMLPSGD" if strategy.scaffold else MODEL_CLASS
    model = ModelRef(style="lightning", name="adult-mlp", class_name=class_name, source=source,
                     sha256=source_sha256(source))
    return FedAvgPlan(
        model=model, pods=pods, selection=DataSelection(target="TARGET", categorical_encoding="hashed"),
        rounds=rounds, batch_size=128, learning_rate=5e-3, secure=SecureSettings() if secure else None,
        cohort_scaling=False, strategy=strategy, seed=seed,
    )


def test_one_round_of_each_strategy_family_through_real_pods(tmp_path: Path) -> None:
    sites = [replace(site, extra_toml=OWNER_TOML) for site in prepare_sites(tmp_path / "data", first_rows=2000)]
    pods = [s.name for s in sites]
    modeller = IdentityKey.generate()
    runs = {
        # A server optimiser and FedProx's pod-side term in one secure run.
        "fedadam+prox": (replace(STRATEGIES["fedadam"], proximal_mu=0.1), 1, True),
        "scaffold": (replace(STRATEGIES["scaffold"], eta_l=0.1), 2, True),
        "median": (STRATEGIES["median"], 1, False),
    }

    async def run_all() -> tuple[dict[str, FedAvgResult], list[Path]]:
        results = {}
        async with (
            LocalFederation(tmp_path, sites, modeller=modeller, sandbox="strict") as fed,
            ModellerClient(fed.hub_url, modeller) as client,
        ):
            # Each run from its own initial weights (seed): a pod releases one update per starting point.
            for seed, (name, (strategy, rounds, secure)) in enumerate(runs.items()):
                plan = _plan(pods, strategy, rounds=rounds, secure=secure, seed=seed)
                results[name] = await FedAvg(client, plan, work_dir=tmp_path / name).run()
            states = sorted(tmp_path.rglob("state.sqlite"))
        return results, states

    results, states = asyncio.run(run_all())
    for name, result in results.items():
        assert len(result.report.rounds) == runs[name][1], name
        final = result.report.rounds[-1].overall
        assert 0.6 < final.accuracy <= 1.0, (name, final)
        assert all(np.isfinite(w).all() for w in result.weights.values()), name
    # Each pod kept its SCAFFOLD control variate (one run of this modeller), and nothing else of the run.
    assert len(states) == len(pods)
    for path in states:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT modeller_id, length(tensors) FROM control_variates").fetchall()
        assert [(modeller_id, size > 0) for modeller_id, size in rows] == [(modeller.key_id, True)]
