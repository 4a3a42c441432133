"""FedAvg's modeller-side arithmetic: pooled feature moments and the cohort's common model shape."""

from __future__ import annotations

import numpy as np
import pytest

from pod_agent.data import ColumnSchema, Schema
from pod_agent.errors import ModellerError
from pod_agent.modeller.client import PodInfo
from pod_agent.modeller.fedavg import pooled_moments
from pod_agent.modeller.weights import cohort_datastructure
from pod_agent.protocol.messages import DataSelection


def _stats(values: np.ndarray, nulls: int = 0) -> dict[str, float]:
    return {
        "rows": float(len(values) + nulls), "nulls.x": float(nulls),
        "mean.x": float(values.mean()), "std.x": float(values.std(ddof=1)),
    }


def test_pooled_moments_equal_those_of_the_concatenated_data() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(40, 5, 300), rng.normal(25, 3, 1000), rng.normal(60, 10, 57)]
    pooled = pooled_moments([_stats(parts[0]), _stats(parts[1], nulls=17), _stats(parts[2])])
    everything = np.concatenate(parts)
    mean, std = pooled["x"]
    assert mean == pytest.approx(everything.mean(), rel=1e-12)
    assert std == pytest.approx(everything.std(), rel=1e-9)


def test_columns_missing_on_some_pod_are_left_out_and_constants_keep_unit_scale() -> None:
    constant = {"rows": 5.0, "mean.x": 3.0, "std.x": 0.0}
    pooled = pooled_moments([constant | {"mean.only_here": 1.0, "std.only_here": 1.0}, constant])
    assert pooled == {"x": (3.0, 1.0)}


def _pod(name: str, colour_categories: int) -> PodInfo:
    schema = Schema(
        columns=[
            ColumnSchema(name="age", arrow_type="double", stype="continuous"),
            ColumnSchema(name="colour", arrow_type="string", stype="categorical",
                         categories=[f"c{i}" for i in range(colour_categories)]),
            ColumnSchema(name="label", arrow_type="string", stype="categorical", categories=["no", "yes"]),
        ],
        row_count=100,
    )
    public = schema.public(share_categories=False)
    return PodInfo(name=name, key_id="0" * 64, public_key="", schema=public, schema_hash=public["hash"],
                   row_count=100, sandbox_level="strict", online=True)


def test_hashed_encoding_gives_pods_with_different_categories_one_model_shape() -> None:
    planned = cohort_datastructure(
        [_pod("a", 3), _pod("b", 7)], DataSelection(target="label", categorical_encoding="hashed")
    )
    assert planned["n_classes"] == 2
    assert planned["input_size"] == 1 + 64


def test_one_hot_over_different_category_sets_is_refused_with_the_fix() -> None:
    with pytest.raises(ModellerError, match="different shapes.*hashed"):
        cohort_datastructure([_pod("a", 3), _pod("b", 7)], DataSelection(target="label"))


def test_an_averaged_variance_never_goes_below_zero() -> None:
    from pod_agent.modeller.fedavg import apply_mean_update

    weights = {"bn.running_var": np.array([0.5, 0.1], dtype=np.float32), "w": np.array([1.0, -1.0], dtype=np.float32)}
    new = apply_mean_update(
        weights,
        {"bn.running_var": np.array([-0.2, -0.3], dtype=np.float32), "w": np.array([-3.0, 0.5], dtype=np.float32)},
    )
    np.testing.assert_allclose(new["bn.running_var"], [0.3, 0.0])
    np.testing.assert_allclose(new["w"], [-2.0, -0.5])


def test_the_secure_sum_takes_32_bits_only_when_a_32_bit_sum_cannot_wrap() -> None:
    from pod_agent.modeller.fedavg import choose_modulus_bits
    from pod_agent.secagg import ClipBound

    bound = ClipBound(prime_q=2**20, precision=2**16, num_workers=3)
    # Unweighted (as under DP) and without masked metrics: 3 * 2**20 / 2 is far inside 2**31.
    assert choose_modulus_bits(bound, weighted=False, metrics=False, max_rows=50_000) == 32
    # Weighted by a few hundred rows still fits; by a whole adult-sized table it would wrap.
    assert choose_modulus_bits(bound, weighted=True, metrics=False, max_rows=500) == 32
    assert choose_modulus_bits(bound, weighted=True, metrics=False, max_rows=16_000) == 64
    # Masked metrics never fit 32 bits (fixed_point.plan_metrics).
    assert choose_modulus_bits(bound, weighted=False, metrics=True, max_rows=1) == 64
