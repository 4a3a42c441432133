from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_cohort import make_params, names, run_round

from pod_agent.errors import SecAggError
from pod_agent.secagg import (
    METRIC_BOUND,
    ClipBound,
    aggregate_masked,
    encode_update,
    max_weight,
    plan_encoding,
    plan_metrics,
)
from pod_agent.secagg.fixed_point import MAX_METRIC_ROWS, decode_sum


def _largest_accepted_q(num_workers: int, modulus_bits: int) -> int:
    # limit = floor(Q / 2N + 1/2) must satisfy 2 N limit < M.
    limit = ((1 << modulus_bits) - 1) // (2 * num_workers)
    return 2 * num_workers * limit + num_workers - 1


def test_refusal_when_n_times_b_times_p_reaches_half_the_modulus() -> None:
    bound = ClipBound(prime_q=2**32, precision=2**10, num_workers=3)
    with pytest.raises(SecAggError, match=r"sum could wrap: num_workers \* bound \* precision \* weight = 3 \* .* "
                       r"must be < M/2 = 2\*\*32/2 = 2147483648; lower prime_q or precision, use modulus_bits=64"):
        plan_encoding(bound, modulus_bits=32, weight=1)


def test_largest_prime_q_that_fits_is_accepted_and_one_more_is_refused() -> None:
    q = _largest_accepted_q(3, 32)
    plan_encoding(ClipBound(prime_q=q, precision=2**10, num_workers=3), modulus_bits=32, weight=1)
    with pytest.raises(SecAggError, match="could wrap"):
        plan_encoding(ClipBound(prime_q=q + 1, precision=2**10, num_workers=3), modulus_bits=32, weight=1)


def test_weighting_that_overflows_names_weighted_false_as_a_fix() -> None:
    bound = ClipBound(prime_q=2**61 - 1, precision=10**10, num_workers=3)
    plan_encoding(bound, modulus_bits=64, weight=1)
    expected = r"set weighted=false \(weighting by n_rows=100 multiplies the sum; at most 8 rows fit\)"
    with pytest.raises(SecAggError, match=expected):
        plan_encoding(bound, modulus_bits=64, weight=100)


def test_unsupported_modulus_is_refused() -> None:
    with pytest.raises(SecAggError, match="modulus_bits = 16 is not supported"):
        plan_encoding(ClipBound(prime_q=7, precision=1, num_workers=1), modulus_bits=16, weight=1)


@pytest.mark.parametrize("modulus_bits", [32, 64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sum_of_values_beyond_the_bound_never_wraps(modulus_bits: int, sign: float) -> None:
    q = _largest_accepted_q(3, modulus_bits) if modulus_bits == 32 else 2**62
    params = make_params(3, prime_q=q, precision=2**10, modulus_bits=modulus_bits, weighted=False)
    b = ClipBound.from_params(params).bound
    updates = {name: {"w": np.full(1000, sign * 1e30), "at": np.full(10, sign * b)} for name in names(3)}
    assert encode_update(updates["pod-00"], params=params, n_rows=1).n_clipped == 1000
    mean = run_round(updates, params).mean
    np.testing.assert_allclose(mean["w"], sign * b, atol=1 / 2**10)
    np.testing.assert_allclose(mean["at"], sign * b, atol=1 / 2**10)


def test_weighted_sum_at_the_largest_allowed_weight_never_wraps() -> None:
    q, n = 2**40, 3
    rows = ((1 << 63) - 1) // q  # weight * Q / 2 < M / 2 with room for rounding
    params = make_params(n, prime_q=q, precision=2**8, weighted=True)
    b = ClipBound.from_params(params).bound
    updates = {name: {"w": np.full(64, b * 2)} for name in names(n)}
    mean = run_round(updates, params, rows={name: rows for name in names(n)}).mean
    np.testing.assert_allclose(mean["w"], b, rtol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.floats(-1000, 1000), st.sampled_from([32, 64]), st.integers(1, 1000))
def test_one_value_round_trips_within_half_a_unit(value: float, modulus_bits: int, weight: int) -> None:
    bound = ClipBound(prime_q=2**24, precision=2**6, num_workers=1) if modulus_bits == 32 else \
        ClipBound(prime_q=2**40, precision=2**16, num_workers=1)
    encoding = plan_encoding(bound, modulus_bits=modulus_bits, weight=1 if modulus_bits == 32 else weight)
    scale = 1 if modulus_bits == 32 else weight
    expected = float(np.clip(value, -bound.bound, bound.bound))
    work = np.clip(np.array([expected * encoding.scale]), -encoding.limit_float, encoding.limit_float)
    out = np.empty(1, dtype=np.uint32 if modulus_bits == 32 else np.uint64)
    encoding.round_into(work, out)
    decoded = np.empty(1, dtype=np.float64)
    decode_sum(out, divisor=bound.precision * scale, modulus_bits=modulus_bits, out=decoded)
    assert abs(decoded[0] - expected) <= 0.5 / (bound.precision * scale)


# Limits below, at and above 2**51, where the 64-bit encoder's add-and-subtract rounding gives way to np.rint.
@pytest.mark.parametrize(("q", "n"), [(2**40, 3), (2**52, 1), (2**60, 3)])
def test_64_bit_rounding_is_rint_ties_to_even_up_to_the_limit(q: int, n: int) -> None:
    encoding = plan_encoding(ClipBound(prime_q=q, precision=2**16, num_workers=n), modulus_bits=64, weight=1)
    edge = encoding.limit_float
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994, -3.7, 1e6 + 0.5, edge, -edge,
                       edge - 0.5, 0.5 - edge])
    out = np.empty(values.size, dtype=np.uint64)
    encoding.round_into(values.copy(), out)
    assert out.view(np.int64).tolist() == np.rint(values).astype(np.int64).tolist()


@pytest.mark.parametrize(("q", "n", "bits"), [(2**40, 3, 64), (10**9 + 7, 5, 64), (2**20, 11, 32), (99991, 2, 32)])
def test_max_weight_is_exactly_the_largest_weight_that_fits(q: int, n: int, bits: int) -> None:
    bound = ClipBound(prime_q=q, precision=2**8, num_workers=n)
    largest = max_weight(bound, modulus_bits=bits)
    plan_encoding(bound, modulus_bits=bits, weight=largest)
    with pytest.raises(SecAggError, match=f"at most {largest} rows fit"):
        plan_encoding(bound, modulus_bits=bits, weight=largest + 1)


def test_for_bound_gives_at_least_the_asked_bound() -> None:
    bound = ClipBound.for_bound(8.0, precision=2**16, num_workers=11)
    assert bound.bound >= 8.0
    assert bound.prime_q == 2 * 2**16 * 11 * 8
    with pytest.raises(SecAggError, match="clip bound -1.0 must be > 0"):
        ClipBound.for_bound(-1.0, precision=1, num_workers=1)


@pytest.mark.parametrize(("n", "weighted", "q", "scale", "rows"), [
    (10, False, 2**40, 2**15, MAX_METRIC_ROWS),  # 2**19 / N rounded down to a power of two
    (1000, False, 2**40, 2**9, MAX_METRIC_ROWS),
    (1000, True, 2**40, 2**13, 2**24 - 1),  # weighting caps rows near M / Q
])
def test_metric_scale_is_the_largest_power_of_two_that_cannot_wrap(n: int, weighted: bool, q: int, scale: int,
                                                                   rows: int) -> None:
    plan = plan_metrics(ClipBound(prime_q=q, precision=2**16, num_workers=n), modulus_bits=64, weighted=weighted)
    assert (plan.scale, plan.max_rows) == (scale, rows)
    assert n * rows * METRIC_BOUND * plan.scale < 2**63 <= n * rows * METRIC_BOUND * plan.scale * 2


def test_a_pod_with_more_rows_than_metrics_may_weigh_is_refused() -> None:
    params = make_params(3, weighted=False)
    with pytest.raises(SecAggError, match=f"n_rows = {MAX_METRIC_ROWS + 1} exceeds the {MAX_METRIC_ROWS} rows"):
        encode_update({"w": np.ones(2)}, params=params, n_rows=MAX_METRIC_ROWS + 1, metrics={"loss": 1.0},
                      metric_names=["loss"])


def test_too_coarse_a_metric_scale_is_refused_with_the_numbers() -> None:
    with pytest.raises(SecAggError, match=r"num_workers \* rows \* metric bound \* scale = 4096 \* 268435456 \* "
                                          r"65536 \* 256 must be < M/2 = 2\*\*64/2; lower num_workers"):
        plan_metrics(ClipBound(prime_q=2**40, precision=1, num_workers=4096), modulus_bits=64, weighted=False)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_metric_sums_at_the_largest_rows_and_values_never_wrap(sign: float) -> None:
    n = 1000
    params = make_params(n, weighted=False)
    plan = plan_metrics(ClipBound.from_params(params), modulus_bits=64, weighted=False)
    encoded = encode_update({"w": np.ones(2)}, params=params, n_rows=plan.max_rows,
                            metrics={"loss": sign * 1e30}, metric_names=["loss"])
    assert encoded.metrics_clipped == ("loss",)
    # n identical pods: summing the vector n times is the cohort's sum.
    total = encoded.vector * np.uint64(n)
    result = aggregate_masked([total], layout=encoded.layout, params=params, n_pods=n)
    assert result.metrics["loss"] == sign * METRIC_BOUND
