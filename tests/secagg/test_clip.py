from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pod_agent.errors import SecAggError
from pod_agent.secagg import ClipBound, clip_l2, clip_update
from pod_agent.secagg.clip import clip_chunk

BOUND = ClipBound(prime_q=2**31 - 1, precision=10**4, num_workers=4)


def test_bound_follows_the_seeds_formula() -> None:
    assert BOUND.bound == (2**31 - 1) / (10**4 * 2 * 4)


def test_seeds_dict_form_is_accepted() -> None:
    bound = ClipBound.from_mapping({"prime_q": 2**31 - 1, "precision": 10**4, "num_workers": 4})
    assert bound == BOUND


def test_seeds_dict_with_unknown_key_is_refused() -> None:
    with pytest.raises(SecAggError, match="param_clipping keys"):
        ClipBound.from_mapping({"prime_q": 7, "precision": 1, "num_workers": 1, "extra": 2})


@pytest.mark.parametrize("field", ["prime_q", "precision", "num_workers"])
def test_non_positive_or_float_clipping_field_is_refused(field: str) -> None:
    values: dict[str, object] = {"prime_q": 7, "precision": 1, "num_workers": 1, field: 0}
    with pytest.raises(SecAggError, match=f"param_clipping.{field} = 0 is not a positive integer"):
        ClipBound(**values)  # type: ignore[arg-type]
    values[field] = 1.5
    with pytest.raises(SecAggError, match=f"param_clipping.{field} = 1.5"):
        ClipBound(**values)  # type: ignore[arg-type]


def test_values_inside_and_at_the_bound_are_kept_and_not_counted() -> None:
    b = BOUND.bound
    w = np.array([-b, -b / 2, 0.0, b / 3, b], dtype=np.float64)
    out = clip_update({"w": w}, BOUND)
    np.testing.assert_array_equal(out.arrays["w"], w)
    assert out.n_clipped == 0


def test_values_beyond_the_bound_are_clipped_and_counted() -> None:
    b = BOUND.bound
    w = np.array([-10 * b, -b * 1.0001, 0.5, b * 1.0001, 1e30], dtype=np.float64)
    out = clip_update({"w": w}, BOUND)
    np.testing.assert_array_equal(out.arrays["w"], [-b, -b, 0.5, b, b])
    assert out.n_clipped == 4


def test_dtype_and_shape_are_kept() -> None:
    w = np.ones((3, 4), dtype=np.float32) * 1e9
    out = clip_update({"layer.weight": w}, BOUND)
    assert out.arrays["layer.weight"].dtype == np.float32
    assert out.arrays["layer.weight"].shape == (3, 4)
    assert out.n_clipped == 12


def test_sent_variance_is_never_clipped_below_zero() -> None:
    var = np.array([-0.5, 0.0, 2.0], dtype=np.float32)
    out = clip_update({"bn.running_var": var, "bn.running_mean": var}, BOUND, returns="weights")
    np.testing.assert_array_equal(out.arrays["bn.running_var"], [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(out.arrays["bn.running_mean"], var)
    assert out.n_clipped == 1


def test_variance_update_may_be_negative() -> None:
    delta = np.array([-0.5, 0.25], dtype=np.float32)
    out = clip_update({"bn.running_var": delta}, BOUND, returns="update")
    np.testing.assert_array_equal(out.arrays["bn.running_var"], delta)


def test_integer_buffer_is_refused_with_the_fix() -> None:
    with pytest.raises(SecAggError, match="num_batches_tracked.*drop integer buffers"):
        clip_update({"bn.num_batches_tracked": np.array(3, dtype=np.int64)}, BOUND)


def test_nan_is_refused() -> None:
    with pytest.raises(SecAggError, match="NaN or infinite"):
        clip_update({"w": np.array([1.0, np.nan])}, BOUND)


def test_l2_clip_scales_a_long_update_to_the_norm() -> None:
    arrays = {"a": np.full(4, 3.0, dtype=np.float32), "b": np.full(9, 4.0, dtype=np.float32)}
    out = clip_l2(arrays, clip_norm=1.0)
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in out.arrays.values()))
    assert out.norm == pytest.approx(np.sqrt(4 * 9 + 9 * 16))
    assert norm == pytest.approx(1.0, rel=1e-6)
    assert out.scale == pytest.approx(1.0 / out.norm)


def test_l2_clip_keeps_a_short_update() -> None:
    arrays = {"a": np.array([0.3, 0.4], dtype=np.float32)}
    out = clip_l2(arrays, clip_norm=1.0)
    assert out.scale == 1.0
    np.testing.assert_array_equal(out.arrays["a"], arrays["a"])


def test_l2_clip_refuses_a_non_positive_norm() -> None:
    with pytest.raises(SecAggError, match="clip_norm = 0"):
        clip_l2({"a": np.ones(2)}, clip_norm=0)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e7, 1e7)))
def test_clipped_values_lie_within_the_bound_and_count_matches(values: np.ndarray) -> None:
    out = clip_update({"w": values}, BOUND)
    assert np.all(np.abs(out.arrays["w"]) <= BOUND.bound)
    assert out.n_clipped == int(np.count_nonzero(np.abs(values) > BOUND.bound))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_lone_non_finite_value_is_refused_wherever_it_lies(bad: float) -> None:
    for values in ([bad], [0.5, bad], [bad, -0.5, 0.25]):
        with pytest.raises(SecAggError, match="NaN or infinite"):
            clip_chunk(np.array(values, dtype=np.float64), low=-1.0, high=1.0)


def test_clip_chunk_matches_a_plain_clip_and_count_on_every_side() -> None:
    rng = np.random.default_rng(7)
    for spread in (0.5, 1.0, 3.0):
        work = rng.uniform(-spread, spread, size=1000)
        expected_count = int(np.sum(work > 1.0) + np.sum(work < -1.0))
        expected = np.clip(work, -0.75, 0.75)
        assert clip_chunk(work, low=-1.0, high=1.0, clip_high=0.75) == expected_count
        np.testing.assert_array_equal(work, expected)
