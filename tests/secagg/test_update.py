from __future__ import annotations

import numpy as np
import pytest
from secagg_cohort import make_params

from pod_agent.errors import SecAggError
from pod_agent.secagg import (
    METRIC_BOUND,
    ClipBound,
    Layout,
    encode_update,
    floating_tensors,
    plan_metrics,
    vector_from_bytes,
    vector_to_bytes,
)

PARAMS = make_params(3)


def _update() -> dict[str, np.ndarray]:
    return {"fc.weight": np.ones((3, 2), np.float32), "bn.running_var": np.ones(2, np.float32),
            "fc.bias": np.zeros(3, np.float32)}


def test_layout_is_sorted_by_name_with_a_row_slot_at_the_end() -> None:
    layout = Layout.from_arrays(_update())
    assert [(s.name, s.shape, s.offset, s.size) for s in layout.tensors] == [
        ("bn.running_var", (2,), 0, 2), ("fc.bias", (3,), 2, 3), ("fc.weight", (3, 2), 5, 6)]
    assert (layout.n_values, layout.size, layout.row_slot) == (11, 12, 11)


def test_metrics_take_two_sorted_slots_each_between_the_tensors_and_the_row_slot() -> None:
    layout = Layout.from_arrays(_update(), metrics=["loss", "accuracy"])
    assert layout.metrics == ("accuracy", "loss")
    assert (layout.metric_slots("accuracy"), layout.metric_slots("loss")) == ((11, 12), (13, 14))
    assert (layout.size, layout.row_slot) == (16, 15)


def test_a_metric_named_twice_is_refused() -> None:
    with pytest.raises(SecAggError, match=r"metric names \['loss', 'loss'\] repeat a name"):
        Layout.from_arrays(_update(), metrics=["loss", "loss"])


def test_modeller_derives_the_pods_layout_from_the_global_weights() -> None:
    global_weights = {name: np.zeros_like(value) for name, value in reversed(_update().items())}
    encoded = encode_update(_update(), params=PARAMS, n_rows=5, metrics={"loss": 1.0}, metric_names=["loss"])
    assert encoded.layout == Layout.from_arrays(global_weights, metrics=["loss"])
    assert encoded.vector.shape == (14,) and encoded.vector.dtype == np.uint64


def test_metric_slots_hold_rows_times_the_scaled_value_and_the_rows() -> None:
    scale = plan_metrics(ClipBound.from_params(PARAMS), modulus_bits=64, weighted=True).scale
    encoded = encode_update(_update(), params=PARAMS, n_rows=5, metrics={"loss": -0.5, "acc": 0.75},
                            metric_names=["acc", "loss", "f1"])
    value = encoded.vector.view(np.int64)
    layout = encoded.layout
    assert [int(value[i]) for i in layout.metric_slots("acc")] == [5 * round(0.75 * scale), 5]
    assert [int(value[i]) for i in layout.metric_slots("loss")] == [5 * round(-0.5 * scale), 5]
    assert [int(value[i]) for i in layout.metric_slots("f1")] == [0, 0]
    assert int(value[layout.row_slot]) == 5


def test_a_metric_beyond_the_bound_is_clipped_and_named() -> None:
    encoded = encode_update(_update(), params=PARAMS, n_rows=2, metrics={"loss": 1e12, "acc": float("-inf")},
                            metric_names=["acc", "loss"])
    scale = plan_metrics(ClipBound.from_params(PARAMS), modulus_bits=64, weighted=True).scale
    value = encoded.vector.view(np.int64)
    assert encoded.metrics_clipped == ("acc", "loss")
    assert int(value[encoded.layout.metric_slots("loss")[0]]) == 2 * METRIC_BOUND * scale
    assert int(value[encoded.layout.metric_slots("acc")[0]]) == -2 * METRIC_BOUND * scale


def test_a_nan_metric_is_sent_as_absent() -> None:
    encoded = encode_update(_update(), params=PARAMS, n_rows=2, metrics={"loss": float("nan")},
                            metric_names=["loss"])
    assert not encoded.vector[list(encoded.layout.metric_slots("loss"))].any()


def test_metrics_in_a_32_bit_modulus_are_refused_with_the_fix() -> None:
    params = make_params(3, modulus_bits=32, prime_q=2**20, weighted=False)
    encode_update(_update(), params=params, n_rows=5)
    with pytest.raises(
        SecAggError, match="train metrics cannot be aggregated without wrapping: .* use modulus_bits=64"
    ):
        encode_update(_update(), params=params, n_rows=5, metrics={"loss": 1.0}, metric_names=["loss"])


def test_clipped_values_are_counted() -> None:
    b = ClipBound.from_params(PARAMS).bound
    encoded = encode_update({"w": np.array([0.0, b, 2 * b, -3 * b], dtype=np.float64)}, params=PARAMS, n_rows=1)
    assert encoded.n_clipped == 2


def test_l2_clip_factor_is_reported() -> None:
    encoded = encode_update({"w": np.full(4, 1.0, dtype=np.float32)}, params=make_params(3, clip_norm=1.0),
                            n_rows=1)
    assert encoded.norm_scale == pytest.approx(0.5)


def test_zero_rows_is_refused() -> None:
    with pytest.raises(SecAggError, match="n_rows = 0"):
        encode_update(_update(), params=PARAMS, n_rows=0)


def test_row_count_that_could_wrap_its_slot_is_refused() -> None:
    params = make_params(3, modulus_bits=32, prime_q=2**20, weighted=False)
    with pytest.raises(SecAggError, match="row-count slot mod 2\\*\\*32; use modulus_bits=64"):
        encode_update(_update(), params=params, n_rows=2**30)


def test_integer_buffer_is_refused() -> None:
    update = {**_update(), "bn.num_batches_tracked": np.array(4, dtype=np.int64)}
    with pytest.raises(SecAggError, match="'bn.num_batches_tracked' has dtype int64"):
        encode_update(update, params=PARAMS, n_rows=1)


def test_infinite_value_is_refused() -> None:
    with pytest.raises(SecAggError, match="NaN or infinite"):
        encode_update({"w": np.array([1.0, np.inf], dtype=np.float32)}, params=PARAMS, n_rows=1)


def test_empty_update_is_refused() -> None:
    with pytest.raises(SecAggError, match="holds no values"):
        encode_update({"w": np.zeros(0, np.float32)}, params=PARAMS, n_rows=1)


@pytest.mark.parametrize("bits", [32, 64])
def test_vector_bytes_round_trip(bits: int) -> None:
    params = make_params(3, modulus_bits=bits, prime_q=2**30)
    encoded = encode_update(_update(), params=params, n_rows=3)
    data = vector_to_bytes(encoded.vector)
    assert len(data) == 12 * bits // 8
    np.testing.assert_array_equal(vector_from_bytes(data, layout=encoded.layout, params=params), encoded.vector)


def test_vector_bytes_are_a_read_only_view_without_a_copy_and_little_endian_from_any_order() -> None:
    vector = np.arange(5, dtype=np.uint64) << np.uint64(40)
    data = vector_to_bytes(vector)
    assert data.readonly
    assert np.shares_memory(np.frombuffer(data, dtype=np.uint64), vector)
    assert bytes(vector_to_bytes(vector.astype(">u8"))) == vector.astype("<u8").tobytes() == bytes(data)


def test_vector_bytes_of_the_wrong_length_are_refused() -> None:
    layout = Layout.from_arrays(_update())
    with pytest.raises(SecAggError, match="masked vector is 8 bytes; the layout needs 12 x 8 = 96"):
        vector_from_bytes(bytes(8), layout=layout, params=PARAMS)


def test_sent_weights_clip_a_negative_variance_to_zero() -> None:
    encoded = encode_update({"bn.running_var": np.array([-1.0, 2.0], np.float32)}, params=PARAMS, n_rows=1,
                            returns="weights")
    assert encoded.n_clipped == 1
    assert int(encoded.vector.view(np.int64)[0]) == 0


def test_floating_tensors_leave_integer_buffers_out() -> None:
    weights = {**_update(), "bn.num_batches_tracked": np.array(4, dtype=np.int64)}
    assert Layout.from_arrays(floating_tensors(weights)) == Layout.from_arrays(_update())
