from __future__ import annotations

import numpy as np
import pytest
from secagg_cohort import TASK_A, Cohort

from pod_agent.errors import SecAggError
from pod_agent.secagg import (
    ClipBound,
    Layout,
    RoundKeyPair,
    floating_tensors,
    protect_update,
    vector_from_bytes,
    vector_to_bytes,
)


def _update() -> dict[str, np.ndarray]:
    return {"fc.weight": np.ones((3, 2), np.float32), "bn.running_var": np.ones(2, np.float32),
            "fc.bias": np.zeros(3, np.float32)}


def test_layout_is_sorted_by_name_with_a_row_slot_at_the_end() -> None:
    layout = Layout.from_arrays(_update())
    assert [(s.name, s.shape, s.offset, s.size) for s in layout.tensors] == [
        ("bn.running_var", (2,), 0, 2), ("fc.bias", (3,), 2, 3), ("fc.weight", (3, 2), 5, 6)]
    assert (layout.n_values, layout.size, layout.row_slot) == (11, 12, 11)


def test_modeller_derives_the_pods_layout_from_the_global_weights(cohort3: Cohort) -> None:
    global_weights = {name: np.zeros_like(value) for name, value in reversed(_update().items())}
    protected = protect_update(_update(), params=cohort3.params(), task_id=TASK_A, me="pod-00",
                               my_round_key=cohort3.keys["pod-00"], n_rows=5)
    assert protected.layout == Layout.from_arrays(global_weights)
    assert protected.vector.shape == (12,) and protected.vector.dtype == np.uint64


def test_clipped_values_are_counted(cohort3: Cohort) -> None:
    params = cohort3.params()
    b = ClipBound.from_params(params).bound
    update = {"w": np.array([0.0, b, 2 * b, -3 * b], dtype=np.float64)}
    protected = protect_update(update, params=params, task_id=TASK_A, me="pod-00",
                               my_round_key=cohort3.keys["pod-00"], n_rows=1)
    assert protected.n_clipped == 2


def test_l2_clip_factor_is_reported(cohort3: Cohort) -> None:
    params = cohort3.params(clip_norm=1.0)
    update = {"w": np.full(4, 1.0, dtype=np.float32)}
    protected = protect_update(update, params=params, task_id=TASK_A, me="pod-00",
                               my_round_key=cohort3.keys["pod-00"], n_rows=1)
    assert protected.norm_scale == pytest.approx(0.5)


def test_more_participants_than_num_workers_is_refused(cohort3: Cohort) -> None:
    with pytest.raises(SecAggError, match="3 participants exceed param_clipping num_workers = 2"):
        protect_update(_update(), params=cohort3.params(num_workers=2), task_id=TASK_A, me="pod-00",
                       my_round_key=cohort3.keys["pod-00"], n_rows=1)


def test_a_cohort_of_one_is_refused(cohort3: Cohort) -> None:
    params = cohort3.params(participants=cohort3.participants()[:1])
    with pytest.raises(SecAggError, match="at least 2 participants"):
        protect_update(_update(), params=params, task_id=TASK_A, me="pod-00", my_round_key=cohort3.keys["pod-00"],
                       n_rows=1)


def test_me_missing_from_the_participants_is_refused(cohort3: Cohort) -> None:
    with pytest.raises(SecAggError, match="'pod-07' is not in the round's participants"):
        protect_update(_update(), params=cohort3.params(), task_id=TASK_A, me="pod-07",
                       my_round_key=RoundKeyPair.generate(), n_rows=1)


def test_zero_rows_is_refused(cohort3: Cohort) -> None:
    with pytest.raises(SecAggError, match="n_rows = 0"):
        protect_update(_update(), params=cohort3.params(), task_id=TASK_A, me="pod-00",
                       my_round_key=cohort3.keys["pod-00"], n_rows=0)


def test_row_count_that_could_wrap_its_slot_is_refused(cohort3: Cohort) -> None:
    params = cohort3.params(modulus_bits=32, prime_q=2**20, weighted=False)
    with pytest.raises(SecAggError, match="row-count slot mod 2\\*\\*32; use modulus_bits=64"):
        protect_update(_update(), params=params, task_id=TASK_A, me="pod-00", my_round_key=cohort3.keys["pod-00"],
                       n_rows=2**30)


def test_integer_buffer_is_refused(cohort3: Cohort) -> None:
    update = {**_update(), "bn.num_batches_tracked": np.array(4, dtype=np.int64)}
    with pytest.raises(SecAggError, match="'bn.num_batches_tracked' has dtype int64"):
        protect_update(update, params=cohort3.params(), task_id=TASK_A, me="pod-00",
                       my_round_key=cohort3.keys["pod-00"], n_rows=1)


def test_infinite_value_is_refused(cohort3: Cohort) -> None:
    update = {"w": np.array([1.0, np.inf], dtype=np.float32)}
    with pytest.raises(SecAggError, match="NaN or infinite"):
        protect_update(update, params=cohort3.params(), task_id=TASK_A, me="pod-00",
                       my_round_key=cohort3.keys["pod-00"], n_rows=1)


@pytest.mark.parametrize("bits", [32, 64])
def test_vector_bytes_round_trip(cohort3: Cohort, bits: int) -> None:
    params = cohort3.params(modulus_bits=bits, prime_q=2**30)
    protected = protect_update(_update(), params=params, task_id=TASK_A, me="pod-02",
                               my_round_key=cohort3.keys["pod-02"], n_rows=3)
    data = vector_to_bytes(protected.vector)
    assert len(data) == 12 * bits // 8
    np.testing.assert_array_equal(vector_from_bytes(data, layout=protected.layout, params=params), protected.vector)


def test_vector_bytes_of_the_wrong_length_are_refused(cohort3: Cohort) -> None:
    layout = Layout.from_arrays(_update())
    with pytest.raises(SecAggError, match="masked vector is 8 bytes; the layout needs 12 x 8 = 96"):
        vector_from_bytes(bytes(8), layout=layout, params=cohort3.params())


def test_empty_update_is_refused(cohort3: Cohort) -> None:
    with pytest.raises(SecAggError, match="holds no values"):
        protect_update({"w": np.zeros(0, np.float32)}, params=cohort3.params(), task_id=TASK_A, me="pod-00",
                       my_round_key=cohort3.keys["pod-00"], n_rows=1)


def test_sent_weights_clip_a_negative_variance_to_zero(cohort3: Cohort) -> None:
    params = cohort3.params(weighted=False)
    weights = {"bn.running_var": np.array([-1.0, 2.0], np.float32)}
    protected = cohort3.protect_all({name: weights for name in cohort3.names}, params, returns="weights")
    assert all(p.n_clipped == 1 for p in protected.values())
    np.testing.assert_allclose(cohort3.aggregate(protected, params)["bn.running_var"], [0.0, 2.0])


def test_floating_tensors_leave_integer_buffers_out() -> None:
    weights = {**_update(), "bn.num_batches_tracked": np.array(4, dtype=np.int64)}
    assert Layout.from_arrays(floating_tensors(weights)) == Layout.from_arrays(_update())
