"""Decoding: the unmasked sum of fixed-point vectors gives the (weighted) mean, metrics included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_cohort import assert_within, decode_plain, make_params, names, plain_mean, run_round

from pod_agent.errors import SecAggError
from pod_agent.secagg import Layout, aggregate_masked, encode_update, sum_vectors


def _logistic_regression_updates(pods: list[str], seed: int) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """Real updates: a few epochs of SGD of a logistic regression on each pod's own (non-IID) data."""
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=(12, 2))
    w0 = (rng.normal(size=(12, 2)) * 0.1).astype(np.float32)
    updates, rows = {}, {}
    for index, name in enumerate(pods):
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
def test_decoded_mean_of_random_updates_equals_the_plain_mean(bits: int) -> None:
    pods = names(5)
    params = make_params(5, modulus_bits=bits, prime_q=2**31 if bits == 32 else 2**40, precision=2**16,
                         weighted=False)
    rng = np.random.default_rng(bits)
    updates = {n: {"a": rng.normal(size=(40, 30)).astype(np.float32), "b": rng.uniform(-1, 1, size=7)} for n in pods}
    encoded = {n: encode_update(updates[n], params=params, n_rows=1) for n in pods}
    assert_within(decode_plain(encoded, params).mean, plain_mean(updates), 5 / 2**16)


def test_secure_weighted_mean_of_real_updates_equals_the_sample_weighted_mean() -> None:
    pods = names(4)
    params = make_params(4, prime_q=2**36, precision=2**20, weighted=True)
    updates, rows = _logistic_regression_updates(pods, seed=3)
    result = run_round(updates, params, rows=rows)
    assert result.total_rows == sum(rows.values())
    assert result.n_pods == 4
    assert result.mean["fc.weight"].dtype == np.float32
    assert_within(result.mean, plain_mean(updates, rows), 4 / 2**20)


def test_unweighted_mode_still_reports_total_rows() -> None:
    pods = names(3)
    params = make_params(3, weighted=False)
    encoded = {n: encode_update({"w": np.full(3, float(i), np.float32)}, params=params, n_rows=10 * (i + 1))
               for i, n in enumerate(pods)}
    result = decode_plain(encoded, params)
    assert result.total_rows == 60
    np.testing.assert_allclose(result.mean["w"], 1.0)


def test_an_unmasked_sum_decodes_with_the_number_of_pods_in_it() -> None:
    pods = names(3)
    params = make_params(3, weighted=False)
    encoded = [encode_update({"w": np.full(3, float(i), np.float32)}, params=params, n_rows=4) for i in range(3)]
    layout = encoded[0].layout
    total = sum_vectors([e.vector for e in encoded], layout=layout, params=params)
    result = aggregate_masked([total], layout=layout, params=params, n_pods=len(pods))
    assert (result.n_pods, result.total_rows) == (3, 12)
    np.testing.assert_allclose(result.mean["w"], 1.0)


def test_more_pods_than_num_workers_are_refused() -> None:
    params = make_params(2)
    layout = Layout.from_arrays({"w": np.ones(5, np.float32)})
    with pytest.raises(SecAggError, match="the sum holds 3 pods; param_clipping num_workers = 2 bounds it"):
        aggregate_masked([np.zeros(6, np.uint64)], layout=layout, params=params, n_pods=3)


def test_no_vectors_are_refused() -> None:
    layout = Layout.from_arrays({"w": np.ones(5, np.float32)})
    with pytest.raises(SecAggError, match="no masked vectors to sum: every pod of the round dropped"):
        sum_vectors([], layout=layout, params=make_params(2))


def test_vector_of_another_layout_is_refused() -> None:
    params = make_params(2)
    layout = Layout.from_arrays({"w": np.ones(5, np.float32)})
    expected = r"masked vector 1 is uint64 of shape \(7,\); the round needs uint64 of shape \(6,\)"
    with pytest.raises(SecAggError, match=expected):
        aggregate_masked([np.zeros(6, np.uint64), np.zeros(7, np.uint64)], layout=layout, params=params)


def test_vectors_from_mixed_rounds_are_refused() -> None:
    params = make_params(2)
    layout = Layout.from_arrays({"w": np.ones(5, np.float32)})
    with pytest.raises(SecAggError, match="row-count slot decodes to 0 for 2 pods"):
        aggregate_masked([np.zeros(6, np.uint64), np.zeros(6, np.uint64)], layout=layout, params=params)


def test_a_metric_no_pod_had_is_absent_and_the_others_are_row_weighted() -> None:
    params = make_params(3)
    rows = [10, 30, 60]
    encoded = {str(i): encode_update({"w": np.ones(2)}, params=params, n_rows=r, metrics={"acc": i / 2},
                                     metric_names=["acc", "auc"]) for i, r in enumerate(rows)}
    result = decode_plain(encoded, params)
    assert result.metrics == pytest.approx({"acc": (0 * 10 + 0.5 * 30 + 1.0 * 60) / 100})


@settings(max_examples=30, deadline=None)
@given(
    n_pods=st.integers(2, 6),
    bits=st.sampled_from([32, 64]),
    weighted=st.booleans(),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoded_mean_matches_plain_mean_for_any_cohort(n_pods: int, bits: int, weighted: bool, scale: float,
                                                          seed: int) -> None:
    pods = names(n_pods)
    precision = 2**10 if bits == 32 else 2**24
    params = make_params(n_pods, modulus_bits=bits, prime_q=2**28 if bits == 32 else 2**50, precision=precision,
                         weighted=weighted and bits == 64)
    rng = np.random.default_rng(seed)
    updates = {n: {"x": (rng.normal(size=17) * scale), "y": rng.normal(size=(2, 3)).astype(np.float32)}
               for n in pods}
    rows = {n: int(rng.integers(1, 500)) for n in pods}
    encoded = {n: encode_update(updates[n], params=params, n_rows=rows[n]) for n in pods}
    bound = params.prime_q / (precision * 2 * n_pods)
    clipped = {n: {k: np.clip(v, -bound, bound) for k, v in u.items()} for n, u in updates.items()}
    expected = plain_mean(clipped, rows if params.weighted else None)
    # float32 outputs (y) add their own rounding on top of the fixed point's N / P
    assert_within(decode_plain(encoded, params).mean, expected, n_pods / precision + 1e-6)
