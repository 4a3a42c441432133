"""Hostile models that stay inside the sandbox and try to carry rows out through what the pod reports:
metric names and values, progress, the row count, crafted results, failure words, category values.

Each model (``corpus/``, after ``corpus/_kit.py``) runs for real at sandbox level strict on one pod; the
hub records everything the pod sends. Each test decodes that the way the attack encoded it and compares
the outcome with the table (``TableSecrets``): a match is a leak. One rig for the module; every attack is
submitted when the first test asks for one (``attacks``), so the pod's two runners work through them
while the tests look at what came back.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
from privacy_support import (
    Attacker,
    PrivacyRig,
    ResultView,
    bits,
    lightning,
    nothing_recoverable,
)

from pod_agent.agent.egress import METRIC_VOCABULARY
from pod_agent.protocol.messages import Hyperparameters, ProgressEvent, TaskLimits, TaskPayload

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

EVALUATE = Hyperparameters(epochs=2, batch_size=8)  # epochs bound the progress a task may show
TRAIN = Hyperparameters(epochs=1, batch_size=32)


def failed(view: ResultView, code: str) -> None:
    assert (view.status, view.reason) == ("failed", code), view
    assert view.result is not None
    payload = view.result.payload
    assert payload.metrics == {} and payload.n_rows == 0 and payload.blob is None


def metrics_of(view: ResultView) -> dict[str, float]:
    assert view.status == "done" and view.result is not None, view
    return dict(view.result.payload.metrics)


def leaked(rig: PrivacyRig, positions: Mapping[int, int]) -> str | None:
    return rig.secrets.leaked_split(positions)


def as_positions(values: list[int]) -> dict[int, int]:
    return dict(enumerate(values))


CRAFTED = [
    # (variant, kind, code): what the model sends instead of its result, and how the task must end
    ("extra_tensor", "train", "result_rejected"),  # the pinned tensors as zeros, one more holding 32 input rows
    ("dtype_under_f32_header", "train", "result_rejected"),  # names, shapes right, F32 declared, float64 sent
    ("negative_rows", "evaluate", "result_rejected"),  # n_rows = -(32 target bits)
    ("metric_flood", "evaluate", "result_rejected"),  # 13,400 metrics, one target bit each
    # n_rows NaN (and 16 target bits as a metric) in a frame written by hand: not JSON, so not a frame.
    ("nan_rows", "evaluate", "sandbox_error"),
]
FAILURES = [
    "made_up_code",  # TrainingError("rows_<16 target bits>") raised from the model
    "agent_code",  # the channel's fail() with a code only the agent may decide, chosen by a target bit
    "free_text",  # a fail frame written by hand, past the channel's check: "row 0 is <16 target bits>"
]
# The modeller guesses every category value of the real table (it knows Adult's); the controls are strings
# the sandbox must see: a column name and index-named one-hot features (col=#i, col=#other).
CONTROLS = ["hours-per-week", "workclass=#0", "workclass=#other"]


def _with(hp: Hyperparameters, **extra: Any) -> Hyperparameters:
    return hp.model_copy(update={"extra": extra})


async def _plan(rig: PrivacyRig) -> dict[str, tuple[Attacker, TaskPayload]]:
    """Every attack of the module: name -> (who signs it, the task)."""
    owner, lifted = rig.owner, rig.lifted
    plan = {
        "metrics_and_progress": (owner, owner.task("evaluate", lightning("metrics_and_progress"), hp=EVALUATE)),
        "row_count": (owner, owner.task("evaluate", lightning("row_count"), hp=EVALUATE)),
        "category_dictionary": (owner, owner.task("evaluate", lightning("category_dictionary"), hp=_with(
            EVALUATE, dictionary=json.dumps(rig.secrets.words), controls=json.dumps(CONTROLS)))),
        # The lifted modeller may predict; every input column as a "prediction" is more than the owner allows.
        "predict_inputs": (lifted, lifted.task("predict", lightning("predict_inputs"), hp=EVALUATE)),
        # The task lowers the pod's cap; a warm worker already holds torch and Lightning (about 1 GiB of data).
        "memory_hog": (owner, owner.task("evaluate", lightning("memory_hog"), hp=EVALUATE).model_copy(
            update={"limits": TaskLimits(memory_mb=1536)})),
    }
    for variant in FAILURES:
        model = lightning("failure_words")
        plan[f"failure:{variant}"] = (owner, owner.task("evaluate", model, hp=_with(EVALUATE, variant=variant)))
    for variant, kind, _ in CRAFTED:
        hp, model = _with(TRAIN if kind == "train" else EVALUATE, variant=variant), lightning("crafted_result")
        weights = await lifted.pinned(model, hp) if kind == "train" else None
        plan[f"crafted:{variant}"] = (lifted, lifted.task(kind, model, hp=hp, weights=weights))
    return plan


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacks(rig: PrivacyRig) -> AsyncIterator[dict[str, asyncio.Task[ResultView]]]:
    """Each attack's outcome, all submitted at once (the pod runs them two at a time, oldest first)."""
    plan = await _plan(rig)
    running = {name: asyncio.create_task(attacker.outcome(task)) for name, (attacker, task) in plan.items()}
    yield running
    for task in running.values():  # attacks no selected test asked for
        task.cancel()
    await asyncio.gather(*running.values(), return_exceptions=True)


# -- channels 1 and 4: metric names and values, progress --------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metrics_and_progress(attacks: dict[str, asyncio.Task[ResultView]]) -> ResultView:
    return await attacks["metrics_and_progress"]


async def test_metric_names_chosen_in_the_sandbox_never_reach_the_modeller(
    rig: PrivacyRig, metrics_and_progress: ResultView
) -> None:
    # Names outside the vocabulary: literal (val_rows_0, test_rows_*: 16 target bits as the value) and made
    # from rows (val_<16 target bits>); nothing_recoverable decodes any 16-bit binary string it finds.
    metrics = metrics_of(metrics_and_progress)
    assert set(metrics) <= set(METRIC_VOCABULARY)
    sent = rig.traffic.text(metrics_and_progress.task_id)
    assert "_rows_" not in sent and "val_0" not in sent and "val_1" not in sent
    for name, value in metrics.items():
        if value == int(value) and 1 <= value < 2**16:
            assert leaked(rig, as_positions(bits(int(value), 16))) is None, name
    await nothing_recoverable(rig, metrics_and_progress)


async def test_more_metrics_than_max_metrics_leave_as_the_first_in_vocabulary_order(
    metrics_and_progress: ResultView,
) -> None:
    # The model logged 18 vocabulary names; max_metrics is 16: the first 16 in vocabulary order stay,
    # whatever order the sandbox logged them in (val_ names come before test_ names).
    logged = [prefix + base for prefix in ("val_", "test_")
              for base in ("loss", "accuracy", "auc", "f1", "precision", "recall", "mse", "mae", "r2")]
    assert set(metrics_of(metrics_and_progress)) == set(sorted(logged, key=METRIC_VOCABULARY.index)[:16])


async def test_flags_packed_into_one_float32_metric_do_not_come_out(
    rig: PrivacyRig, metrics_and_progress: ResultView
) -> None:
    value = metrics_of(metrics_and_progress)["test_f1"]
    (pattern,) = struct.unpack("<I", struct.pack("<f", value))
    assert leaked(rig, as_positions(bits(pattern & 0xFFFF, 16))) is None


async def test_flags_packed_as_four_digits_and_a_power_of_ten_do_not_come_out(
    rig: PrivacyRig, metrics_and_progress: ResultView
) -> None:
    # 16 flags as q * 9000 + r: the digits 1000 + r and the exponent q - 20 survive rounding to 4 digits.
    value = metrics_of(metrics_and_progress)["test_precision"]
    mantissa, exponent = f"{value:.3e}".split("e")
    r, q = int(mantissa.replace(".", "")) - 1000, int(exponent) - 3 + 20
    assert leaked(rig, as_positions(bits(q * 9000 + r, 16))) is None


def _sandbox_progress(rig: PrivacyRig, view: ResultView) -> list[dict[str, Any]]:
    return [e for e in rig.traffic.progress(view.task_id) if e.get("step") is not None]


async def test_progress_carries_only_the_agents_typed_fields(rig: PrivacyRig, metrics_and_progress: ResultView) -> None:
    # Everything the pod posted (the hub's view) and the latest event as the modeller reads the task status.
    events = rig.traffic.progress(metrics_and_progress.task_id)
    status = await rig.owner.client.status(metrics_and_progress.task_id)
    events.append(status.pods[rig.owner.pod.name]["progress"])
    assert len(events) > 1
    for event in events:
        assert set(event) <= set(ProgressEvent.model_fields), event
        ProgressEvent.model_validate(event)
    await nothing_recoverable(rig, metrics_and_progress)


async def test_losses_the_sandbox_writes_into_progress_carry_no_row(
    rig: PrivacyRig, metrics_and_progress: ResultView
) -> None:
    events = _sandbox_progress(rig, metrics_and_progress)
    positions = {e["step"]: int(e["loss"]) - 1 for e in events if e.get("loss") in (1.0, 2.0)}
    assert leaked(rig, positions) is None, f"{len(positions)} target bits came out through the loss"


async def test_epochs_the_sandbox_writes_into_progress_carry_no_row(
    rig: PrivacyRig, metrics_and_progress: ResultView
) -> None:
    events = _sandbox_progress(rig, metrics_and_progress)
    positions = {e["step"]: e["epoch"] for e in events if e.get("epoch") in (0, 1)}
    assert leaked(rig, positions) is None, f"{len(positions)} target bits came out through the epoch"


# -- the row count and crafted results ----------------------------------------------------------------------


async def test_row_count_is_the_pods_own_count_not_a_number_chosen_in_the_sandbox(
    rig: PrivacyRig, attacks: dict[str, asyncio.Task[ResultView]]
) -> None:
    view = await attacks["row_count"]
    await nothing_recoverable(rig, view)
    assert view.result is not None
    n_rows = view.result.payload.n_rows
    if n_rows >> 48 == 1:
        assert leaked(rig, as_positions(bits(n_rows, 48))) is None, "48 target bits came out as n_rows"
    assert n_rows in (0, rig.secrets.n_rows["test"])


@pytest.mark.parametrize(("variant", "kind", "code"), CRAFTED, ids=[v for v, _, _ in CRAFTED])
async def test_a_result_the_model_crafts_fails_with_a_fixed_code(
    rig: PrivacyRig, attacks: dict[str, asyncio.Task[ResultView]], variant: str, kind: str, code: str
) -> None:
    view = await attacks[f"crafted:{variant}"]
    failed(view, code)
    await nothing_recoverable(rig, view)


async def test_predictions_that_are_the_input_rows_are_failed_result_rejected(
    rig: PrivacyRig, attacks: dict[str, asyncio.Task[ResultView]]
) -> None:
    view = await attacks["predict_inputs"]
    failed(view, "result_rejected")
    await nothing_recoverable(rig, view)


# -- channel 7: category values -------------------------------------------------------------------------------


async def test_no_category_value_can_be_found_anywhere_the_sandbox_reads(
    rig: PrivacyRig, attacks: dict[str, asyncio.Task[ResultView]]
) -> None:
    view = await attacks["category_dictionary"]
    metrics = metrics_of(view)
    assert metrics["test_mae"] == len(CONTROLS), "the sandbox does not see categories named by index"
    assert metrics["test_mse"] == 0, "category values reached the sandbox"
    await nothing_recoverable(rig, view)
    # Nor does the schema the pod registered, which every modeller reads at the hub.
    assert rig.secrets.categories_in_text(json.dumps(rig.owner.pod.schema)) == []


# -- channel 9: failure codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", FAILURES)
async def test_failure_words_chosen_in_the_sandbox_arrive_as_model_error(
    rig: PrivacyRig, attacks: dict[str, asyncio.Task[ResultView]], variant: str
) -> None:
    view = await attacks[f"failure:{variant}"]
    failed(view, "model_error")
    await nothing_recoverable(rig, view)


async def test_memory_exhaustion_arrives_as_memory_exceeded(
    rig: PrivacyRig, attacks: dict[str, asyncio.Task[ResultView]]
) -> None:
    view = await attacks["memory_hog"]
    failed(view, "memory_exceeded")
    await nothing_recoverable(rig, view)
