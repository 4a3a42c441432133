"""The closed egress vocabulary: only vocabulary metric names leave, rounded and capped; progress is
rebuilt from typed fields within the task's own bounds."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pod_agent.agent.egress import (
    METRIC_VOCABULARY,
    ProgressRebuilder,
    reported_metrics,
    round_significant,
    vocabulary_name,
)


@dataclass(frozen=True)
class _Progress:
    stage: str
    epoch: int | None
    step: int | None
    loss: float | None


@pytest.mark.parametrize(
    ("raw", "name"),
    [("val_loss", "val_loss"), ("val_acc", "val_accuracy"), ("test_auroc", "test_auc"), ("train_loss_epoch", "train_loss"),
     ("r2", "r2"), ("train_loss_step", None), ("diagnosis=HIV", None), ("row_17_age", None), ("val_loss ", None),
     ("loss/val", None), ("VAL_LOSS", None)],
)
def test_only_vocabulary_names_may_leave(raw: str, name: str | None) -> None:
    assert vocabulary_name(raw) == name


def test_names_chosen_in_the_sandbox_stay_home_and_values_are_rounded() -> None:
    leaked = {f"age_{i}": float(i) for i in range(40)} | {"val_loss": 0.123456789, "val_accuracy": 0.87654321}
    assert reported_metrics(leaked, digits=4, max_metrics=16) == {"val_loss": 0.1235, "val_accuracy": 0.8765}


def test_sixteen_flags_packed_in_one_float32_do_not_come_out() -> None:
    flags = 0b1011_0110_0101_1101
    packed = struct.unpack("<f", struct.pack("<I", 0x3F800000 | flags))[0]  # 1.0 with the flags in the mantissa
    reported = reported_metrics({"test_loss": packed}, digits=4, max_metrics=16)["test_loss"]
    recovered = struct.unpack("<I", struct.pack("<f", reported))[0] & 0xFFFF
    assert recovered != flags
    assert reported == 1.006  # 1 + 46685 / 2**23 to four digits: the low flags are gone


def test_at_most_max_metrics_leave_in_vocabulary_order_not_the_sandboxs() -> None:
    metrics = {name: 0.5 for name in reversed(METRIC_VOCABULARY)}
    assert list(reported_metrics(metrics, digits=3, max_metrics=3)) == list(METRIC_VOCABULARY[:3])


@given(st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False, min_value=-1e30, max_value=1e30), st.integers(1, 7))
def test_rounding_keeps_at_most_the_floors_digits(value: float, digits: int) -> None:
    rounded = round_significant(value, digits)
    mantissa = f"{rounded:.{digits + 3}e}".split("e")[0].replace("-", "").replace(".", "")
    assert mantissa[digits:].strip("0") == ""


def _rebuilder(**overrides: object) -> ProgressRebuilder:
    fields: dict[str, object] = {"task_id": "t", "max_steps": 100, "max_epochs": 2, "digits": 3, "include_loss": True}
    return ProgressRebuilder(**(fields | overrides))  # type: ignore[arg-type]


def test_progress_is_rebuilt_with_the_agents_fraction_and_a_rounded_loss() -> None:
    event = _rebuilder().rebuild(_Progress("training", 0, 25, 0.693147))
    assert event is not None
    assert (event.stage, event.epoch, event.step, event.fraction, event.loss) == ("training", 0, 25, 0.25, 0.693)


@pytest.mark.parametrize(
    "progress",
    [_Progress("training", 0, 101, 0.1), _Progress("training", 2, 5, 0.1), _Progress("done", 0, 5, 0.1),
     _Progress("training", None, 5, 0.1), _Progress("training", 0, None, 0.1), _Progress("training", 0, -1, 0.1)],
)
def test_progress_outside_the_tasks_bounds_is_not_sent(progress: _Progress) -> None:
    assert _rebuilder().rebuild(progress) is None


def test_steps_never_go_back() -> None:
    rebuilder = _rebuilder()
    assert rebuilder.rebuild(_Progress("training", 0, 50, None)) is not None
    assert rebuilder.rebuild(_Progress("training", 0, 7, None)) is None


def test_no_per_pod_loss_leaves_under_secure_aggregation() -> None:
    event = _rebuilder(include_loss=False).rebuild(_Progress("training", 0, 10, 0.5))
    assert event is not None and event.loss is None
