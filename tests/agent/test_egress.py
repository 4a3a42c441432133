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
    [
        ("val_loss", "val_loss"),
        ("val_acc", "val_accuracy"),
        ("test_auroc", "test_auc"),
        ("train_loss_epoch", "train_loss"),
        ("r2", "r2"),
        ("train_loss_step", None),
        ("diagnosis=HIV", None),
        ("row_17_age", None),
        ("val_loss ", None),
        ("loss/val", None),
        ("VAL_LOSS", None),
    ],
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


@pytest.mark.parametrize(
    ("name", "value", "reported"),
    [("test_precision", 1.234e-17, 0.0), ("test_precision", 7.5, 1.0), ("val_accuracy", 0.87654, 0.8765),
     ("r2", -3e9, -1.0), ("test_loss", 1.234e-17, 0.0), ("test_loss", 5e30, 1000.0), ("test_loss", -2.0, 0.0),
     ("mse", 123.456789, 123.5)],
)
def test_a_value_is_clamped_to_its_metrics_range_so_no_power_of_ten_is_free(
    name: str, value: float, reported: float
) -> None:
    assert reported_metrics({name: value}, digits=4, max_metrics=16) == {name: reported}


@given(st.sampled_from(METRIC_VOCABULARY), st.floats(allow_nan=False, allow_infinity=False))
def test_every_reported_value_is_one_of_fewer_than_2_to_the_17_values(name: str, value: float) -> None:
    reported = reported_metrics({name: value}, digits=4, max_metrics=16)[name]
    if name.endswith(("accuracy", "auc", "f1", "precision", "recall")):
        assert 0 <= reported <= 1 and reported == round(reported, 4)  # 10001 values
    elif name.endswith("r2"):
        assert -1 <= reported <= 1 and reported == round(reported, 4)  # 20001 values
    else:
        # 0, or 4 significant digits in six decades: 1 + 6 * 9000 values
        assert reported == 0 or 1e-3 <= reported <= 1e3
        assert reported == round_significant(reported, 4)


def test_at_most_max_metrics_leave_in_vocabulary_order_not_the_sandboxs() -> None:
    metrics = {name: 0.5 for name in reversed(METRIC_VOCABULARY)}
    assert list(reported_metrics(metrics, digits=3, max_metrics=3)) == list(METRIC_VOCABULARY[:3])


@given(
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False, min_value=-1e30, max_value=1e30),
    st.integers(1, 7),
)
def test_rounding_keeps_at_most_the_floors_digits(value: float, digits: int) -> None:
    rounded = round_significant(value, digits)
    mantissa = f"{rounded:.{digits + 3}e}".split("e")[0].replace("-", "").replace(".", "")
    assert mantissa[digits:].strip("0") == ""


def _rebuilder(**overrides: object) -> ProgressRebuilder:
    fields: dict[str, object] = {"task_id": "t", "total_steps": 100, "steps_per_epoch": 50}
    return ProgressRebuilder(**(fields | overrides))  # type: ignore[arg-type]


def test_progress_is_tenths_of_the_agents_step_count_computed_by_the_agent() -> None:
    rebuilder = _rebuilder()
    assert rebuilder.rebuild(_Progress("training", 0, 9, 0.5)) == []
    (event,) = rebuilder.rebuild(_Progress("training", 0, 12, 0.693147))
    assert (event.stage, event.epoch, event.step, event.fraction) == ("training", 0, 10, 0.1)
    assert "loss" not in event.model_dump()


def test_a_jump_reports_every_tenth_in_order_so_which_ones_appear_says_nothing() -> None:
    events = _rebuilder().rebuild(_Progress("training", 1, 64, None))
    assert [(e.step, e.epoch, e.fraction) for e in events] == [
        (10, 0, 0.1), (20, 0, 0.2), (30, 0, 0.3), (40, 0, 0.4), (50, 0, 0.5), (60, 1, 0.6),
    ]


@pytest.mark.parametrize(
    "progress",
    [_Progress("training", 0, 101, 0.1), _Progress("training", 0, None, 0.1), _Progress("training", 0, -1, 0.1)],
)
def test_progress_outside_the_tasks_bounds_is_not_sent(progress: _Progress) -> None:
    assert _rebuilder().rebuild(progress) == []


@given(st.lists(st.tuples(st.sampled_from(["training", "validating", "done"]), st.integers(-5, 50),
                          st.integers(-5, 120), st.floats()), max_size=40))
def test_whatever_the_sandbox_reports_the_hub_sees_a_prefix_of_the_same_ten_events(
    reports: list[tuple[str, int, int, float]]
) -> None:
    rebuilder = _rebuilder()
    sent = [event for report in reports for event in rebuilder.rebuild(_Progress(*report))]
    reference = _rebuilder().rebuild(_Progress("training", 0, 100, None))
    assert sent == reference[: len(sent)]


def test_an_evaluate_task_sends_no_sandbox_progress_at_all() -> None:
    assert _rebuilder(total_steps=0).rebuild(_Progress("validating", 0, 0, 0.5)) == []
