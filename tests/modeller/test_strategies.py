"""Each strategy's server side against a small reference written here, on a toy least-squares problem:
the same numbers, round after round; robust aggregation is refused under secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from pod_agent.errors import ModellerError
from pod_agent.modeller.fedavg import FedAvgPlan, SecureSettings, apply_mean_update
from pod_agent.modeller.strategies import (
    STRATEGIES,
    ServerControl,
    ServerOptimizer,
    Strategy,
    robust_mean,
    strategy_named,
)
from pod_agent.protocol import DataSelection, ModelRef
from pod_agent.training import control_correction, control_step, tagged, untagged

ROUNDS, LOCAL_STEPS, LR = 5, 4, 0.05
# Three clients, each with its own least-squares problem 0.5 ||A_i x - b_i||^2 (non-IID: different optima).
RNG = np.random.default_rng(7)
PROBLEMS = [(RNG.normal(size=(6, 3)), RNG.normal(size=6) + 3 * i) for i in range(3)]
ROWS = np.array([10.0, 30.0, 60.0])


def _grad(i: int, x: np.ndarray) -> np.ndarray:
    a, b = PROBLEMS[i]
    return np.asarray(a.T @ (a @ x - b))


def _local(i: int, x: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """The client's update y - x after LOCAL_STEPS of SGD (with SCAFFOLD's correction when given)."""
    y = x.copy()
    for _ in range(LOCAL_STEPS):
        y = y - LR * (_grad(i, y) + (0.0 if extra is None else extra))
    return y - x


def _mean_update(x: np.ndarray) -> np.ndarray:
    return np.asarray(sum(w * _local(i, x) for i, w in enumerate(ROWS / ROWS.sum())))


def _reference(s: Strategy, x0: np.ndarray) -> list[np.ndarray]:
    """Flower's update rules for strategy ``s``, written out plainly."""
    x, m, v, history = x0.copy(), np.zeros_like(x0), np.zeros_like(x0), []
    for t in range(1, ROUNDS + 1):
        d = _mean_update(x)
        if s.name == "fedavg":
            x = x + d
        elif s.name == "fedavgm":  # pseudo-gradient -d, momentum vector, x - server lr * vector
            m = -d if t == 1 else s.momentum * m - d
            x = x - s.eta * m
        else:
            m = s.beta_1 * m + (1 - s.beta_1) * d
            if s.name == "fedadam":
                v = s.beta_2 * v + (1 - s.beta_2) * d**2
                eta = s.eta * np.sqrt(1 - s.beta_2 ** (t + 1)) / (1 - s.beta_1 ** (t + 1))
            elif s.name == "fedyogi":
                v = v - (1 - s.beta_2) * d**2 * np.sign(v - d**2)
                eta = s.eta
            else:
                v = v + d**2
                eta = s.eta
            x = x + eta * m / (np.sqrt(v) + s.tau)
        history.append(x.copy())
    return history


# FedAvgM's Flower default momentum is 0 (then it is FedAvg): the reference checks it with momentum too.
@pytest.mark.parametrize("strategy", [
    STRATEGIES["fedavg"], STRATEGIES["fedavgm"], strategy_named("fedavgm", momentum=0.9, eta=0.7),
    STRATEGIES["fedadam"], STRATEGIES["fedyogi"], STRATEGIES["fedadagrad"],
], ids=lambda s: f"{s.name}-{s.momentum}")
def test_server_optimiser_matches_the_reference_round_by_round(strategy: Strategy) -> None:
    x0 = np.zeros(3)
    optimizer = ServerOptimizer(strategy)
    weights = {"w": x0.astype(np.float32)}
    for expected in _reference(strategy, x0):
        d = _mean_update(weights["w"].astype(np.float64))
        weights = apply_mean_update(weights, optimizer.step({"w": d.astype(np.float32)}))
        np.testing.assert_allclose(weights["w"], expected, rtol=1e-4, atol=1e-5)


def test_flowers_default_hyper_parameters() -> None:
    adam, yogi, adagrad = STRATEGIES["fedadam"], STRATEGIES["fedyogi"], STRATEGIES["fedadagrad"]
    assert (adam.eta, adam.beta_1, adam.beta_2, adam.tau) == (0.1, 0.9, 0.99, 1e-9)
    assert (yogi.eta, yogi.beta_1, yogi.beta_2, yogi.tau) == (0.01, 0.9, 0.99, 1e-3)
    assert (adagrad.eta, adagrad.beta_1, adagrad.beta_2, adagrad.tau) == (0.1, 0.0, 0.0, 1e-9)
    assert (STRATEGIES["fedavgm"].eta, STRATEGIES["fedavgm"].momentum) == (1.0, 0.0)


def test_median_and_trimmed_mean_match_the_reference() -> None:
    updates = [{"w": RNG.normal(size=(4, 3)).astype(np.float32)} for _ in range(5)]
    stacked = np.stack([u["w"] for u in updates])
    median = robust_mean(updates, STRATEGIES["median"])["w"]
    np.testing.assert_allclose(median, np.median(stacked, axis=0), rtol=1e-6)
    # beta 0.2 of 5 pods: one cut at each end of every coordinate.
    trimmed = robust_mean(updates, STRATEGIES["trimmed-mean"])["w"]
    expected = (stacked.sum(axis=0) - stacked.max(axis=0) - stacked.min(axis=0)) / 3
    np.testing.assert_allclose(trimmed, expected, rtol=1e-5)
    # An outlier pod moves the mean, not the median.
    poisoned = [*updates[:4], {"w": np.full((4, 3), 1e6, np.float32)}]
    assert np.abs(robust_mean(poisoned, STRATEGIES["median"])["w"]).max() < 10


def test_scaffold_matches_the_reference_round_by_round() -> None:
    """Option II of Karimireddy et al.: the pods' control arithmetic (training.control) and the server's
    (ServerControl), with the control change travelling in the same (here: plain) weighted mean."""
    x = {"w": np.zeros(3, np.float32)}
    server = ServerControl(x)
    local: list[dict[str, np.ndarray] | None] = [None, None, None]
    ref_x, ref_c, ref_ci = np.zeros(3), np.zeros(3), [np.zeros(3) for _ in range(3)]
    shares = ROWS / ROWS.sum()
    optimizer = ServerOptimizer(STRATEGIES["scaffold"])
    for _ in range(ROUNDS):
        # Reference.
        deltas, dcs = [], []
        for i in range(3):
            dy = _local(i, ref_x, extra=ref_c - ref_ci[i])
            new_ci = ref_ci[i] - ref_c - dy / (LOCAL_STEPS * LR)
            deltas.append(dy)
            dcs.append(new_ci - ref_ci[i])
            ref_ci[i] = new_ci
        ref_x = ref_x + sum(s * d for s, d in zip(shares, deltas, strict=True))
        ref_c = ref_c + sum(s * d for s, d in zip(shares, dcs, strict=True))
        # Ours: each pod trains with the correction, then steps its control; the vector carries both.
        vectors = []
        for i in range(3):
            fix = control_correction(server.c, local[i])["w"].astype(np.float64)
            update = {"w": _local(i, x["w"].astype(np.float64), extra=fix).astype(np.float32)}
            step = control_step(update, server=server.c, local=local[i], steps=LOCAL_STEPS, learning_rate=LR)
            local[i] = step.local
            vectors.append(update | tagged(step.delta))
        mean = {n: sum(s * v[n] for s, v in zip(shares, vectors, strict=True)) for n in vectors[0]}
        update_mean, control_mean = untagged(mean)
        server.step(control_mean, share=1.0)
        x = apply_mean_update(x, optimizer.step(update_mean))
        np.testing.assert_allclose(x["w"], ref_x, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(server.c["w"], ref_c, rtol=1e-4, atol=1e-4)


MODEL = ModelRef(style="declarative", name="m", spec={"layers": []}, sha256="0" * 64)


@pytest.mark.parametrize("name", ["median", "trimmed-mean"])
def test_robust_aggregation_under_secure_aggregation_is_refused_with_the_reason(name: str) -> None:
    with pytest.raises(ModellerError, match="only ever sees the masked sum of the cohort's updates"):
        FedAvgPlan(model=MODEL, pods=["a", "b", "c"], selection=DataSelection(target="y"), rounds=1,
                   secure=SecureSettings(), strategy=STRATEGIES[name])


def test_robust_aggregation_in_plain_rounds_is_accepted() -> None:
    plan = FedAvgPlan(model=MODEL, pods=["a", "b", "c"], selection=DataSelection(target="y"), rounds=1,
                      secure=None, strategy=STRATEGIES["median"])
    assert plan.strategy.robust


def test_an_unknown_strategy_names_the_known_ones() -> None:
    with pytest.raises(ModellerError, match="unknown strategy 'fedsgd'; choose one of fedavg, fedavgm, fedadam"):
        strategy_named("fedsgd")
