from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_cohort import Cohort, make_cohort

from pod_agent.errors import SecAggError
from pod_agent.secagg import IncompleteRound, Layout, aggregate_masked

COHORTS = {n: make_cohort(n, tag="agg") for n in range(2, 7)}


def _plain_mean(updates: dict[str, dict[str, np.ndarray]], rows: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    weights = {name: (rows or {}).get(name, 1) for name in updates}
    total = sum(weights.values())
    first = next(iter(updates.values()))
    return {key: sum(updates[n][key].astype(np.float64) * weights[n] for n in updates) / total for key in first}


def _assert_within(mean: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerance: float) -> None:
    assert mean.keys() == expected.keys()
    for key in expected:
        assert mean[key].shape == expected[key].shape
        assert float(np.max(np.abs(mean[key].astype(np.float64) - expected[key]))) <= tolerance


def _logistic_regression_updates(cohort: Cohort, seed: int) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """Real updates: a few epochs of SGD of a logistic regression on each pod's own (non-IID) data."""
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=(12, 2))
    w0 = (rng.normal(size=(12, 2)) * 0.1).astype(np.float32)
    updates, rows = {}, {}
    for index, name in enumerate(cohort.names):
        n = int(rng.integers(200, 2000))
        x = rng.normal(loc=index * 0.3, size=(n, 12)).astype(np.float32)
        y = np.argmax(x @ true_w + rng.normal(size=(n, 2)), axis=1)
        w, b = w0.copy(), np.zeros(2, np.float32)
        for _ in range(5):
            logits = x @ w + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(n), y] -= 1
            w -= 0.5 * (x.T @ p / n).astype(np.float32)
            b -= 0.5 * p.mean(axis=0).astype(np.float32)
        var = x.var(axis=0).astype(np.float32)
        updates[name] = {"fc.weight": w - w0, "fc.bias": b, "bn.running_var": var - 1.0,
                         "bn.running_mean": x.mean(axis=0).astype(np.float32)}
        rows[name] = n
    return updates, rows


@pytest.mark.parametrize("bits", [32, 64])
def test_secure_mean_of_random_updates_equals_the_plain_mean(bits: int) -> None:
    cohort = COHORTS[5]
    params = cohort.params(modulus_bits=bits, prime_q=2**31 if bits == 32 else 2**40, precision=2**16,
                           weighted=False)
    rng = np.random.default_rng(bits)
    updates = {n: {"a": rng.normal(size=(40, 30)).astype(np.float32), "b": rng.uniform(-1, 1, size=7)}
               for n in cohort.names}
    mean = cohort.aggregate(cohort.protect_all(updates, params), params)
    _assert_within(mean, _plain_mean(updates), 5 / 2**16)


def test_secure_weighted_mean_of_real_updates_equals_the_sample_weighted_mean() -> None:
    cohort = COHORTS[4]
    params = cohort.params(prime_q=2**36, precision=2**20, weighted=True)
    updates, rows = _logistic_regression_updates(cohort, seed=3)
    protected = cohort.protect_all(updates, params, rows=rows)
    assert all(p.n_clipped == 0 for p in protected.values())
    result = aggregate_masked([p.vector for p in protected.values()], layout=protected["pod-00"].layout,
                              params=params)
    assert result.total_rows == sum(rows.values())
    assert result.n_pods == 4
    assert result.mean["fc.weight"].dtype == np.float32
    _assert_within(result.mean, _plain_mean(updates, rows), 4 / 2**20)


def test_unweighted_mode_still_reports_total_rows() -> None:
    cohort = COHORTS[3]
    params = cohort.params(weighted=False)
    updates = {n: {"w": np.full(3, float(i), np.float32)} for i, n in enumerate(cohort.names)}
    protected = cohort.protect_all(updates, params, rows={"pod-00": 10, "pod-01": 20, "pod-02": 30})
    result = aggregate_masked([p.vector for p in protected.values()], layout=protected["pod-00"].layout,
                              params=params)
    assert result.total_rows == 60
    np.testing.assert_allclose(result.mean["w"], 1.0)


def test_missing_vector_is_an_incomplete_round_with_the_fix() -> None:
    cohort = COHORTS[3]
    params = cohort.params()
    updates = {n: {"w": np.ones(5, np.float32)} for n in cohort.names}
    protected = list(cohort.protect_all(updates, params).values())
    with pytest.raises(IncompleteRound, match="got 2 masked vectors for 3 participants.*retry the round without"):
        aggregate_masked([p.vector for p in protected[:2]], layout=protected[0].layout, params=params)


def test_vector_of_another_layout_is_refused() -> None:
    cohort = COHORTS[2]
    params = cohort.params()
    layout = Layout.from_arrays({"w": np.ones(5, np.float32)})
    expected = r"masked vector 1 is uint64 of shape \(7,\); the round needs uint64 of shape \(6,\)"
    with pytest.raises(SecAggError, match=expected):
        aggregate_masked([np.zeros(6, np.uint64), np.zeros(7, np.uint64)], layout=layout, params=params)


def test_vectors_from_mixed_rounds_are_refused() -> None:
    cohort = COHORTS[2]
    params = cohort.params()
    layout = Layout.from_arrays({"w": np.ones(5, np.float32)})
    with pytest.raises(SecAggError, match="row-count slot decodes to 0 for 2 pods"):
        aggregate_masked([np.zeros(6, np.uint64), np.zeros(6, np.uint64)], layout=layout, params=params)


@settings(max_examples=30, deadline=None)
@given(
    n_pods=st.integers(2, 6),
    bits=st.sampled_from([32, 64]),
    weighted=st.booleans(),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_secure_mean_matches_plain_mean_for_any_cohort(n_pods: int, bits: int, weighted: bool, scale: float,
                                                         seed: int) -> None:
    cohort = COHORTS[n_pods]
    precision = 2**10 if bits == 32 else 2**24
    params = cohort.params(modulus_bits=bits, prime_q=2**28 if bits == 32 else 2**50, precision=precision,
                           weighted=weighted and bits == 64)
    rng = np.random.default_rng(seed)
    updates = {n: {"x": (rng.normal(size=17) * scale), "y": rng.normal(size=(2, 3)).astype(np.float32)}
               for n in cohort.names}
    rows = {n: int(rng.integers(1, 500)) for n in cohort.names}
    protected = cohort.protect_all(updates, params, rows=rows)
    bound = params.prime_q / (precision * 2 * n_pods)
    clipped = {n: {k: np.clip(v, -bound, bound) for k, v in u.items()} for n, u in updates.items()}
    expected = _plain_mean(clipped, rows if params.weighted else None)
    # float32 outputs (y) add their own rounding on top of the fixed point's N / P
    _assert_within(cohort.aggregate(protected, params), expected, n_pods / precision + 1e-6)
