"""The owner's privacy floor against a hostile modeller: tasks that would let rows out through one
update, a tiny split, unpinned weights, a plain update or too many steps are refused (or failed once the
exact counts are known) with their own code, whatever the modeller signs. One rig for the module.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from privacy_support import (
    FEATURES,
    FOLLOWUP,
    MAX_EFFECTIVE_STEPS,
    SELECTION,
    PrivacyRig,
    ResultView,
    cohort,
    declarative,
    nothing_recoverable,
    settle,
)
from safetensors.numpy import load

from pod_agent.hub.storage import HubTaskRecord
from pod_agent.protocol.messages import DataSelection, Hyperparameters, Split

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ONE_ROW = Hyperparameters(steps=1, batch_size=1)
PLAIN = Hyperparameters(epochs=1, batch_size=32)


def refused(view: ResultView, code: str) -> None:
    assert (view.status, view.reason) == ("refused", code), view
    if view.result is not None:
        assert view.result.payload.metrics == {} and view.result.payload.n_rows == 0
        assert view.result.payload.blob is None


def failed(view: ResultView, code: str) -> None:
    assert (view.status, view.reason) == ("failed", code), view
    assert view.result is not None
    assert view.result.payload.metrics == {} and view.result.payload.n_rows == 0 and view.result.payload.blob is None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain_update(rig: PrivacyRig) -> tuple[Any, ResultView]:
    """The lifted modeller's plain train task and how it ended (it is the only one allowed a plain update)."""
    weights = await rig.lifted.pinned(declarative(), PLAIN)
    task = rig.lifted.task("train", declarative(), hp=PLAIN, weights=weights)
    return task, await rig.lifted.outcome(task)


async def test_one_row_update_from_a_general_modeller_is_refused_batch_too_small(rig: PrivacyRig) -> None:
    # One linear layer, batch 1, one step: the weight gradient is a row and the bias gradient its target.
    spec_task = rig.general.task(
        "train", declarative(), hp=ONE_ROW, weights=await rig.general.pinned(declarative(), ONE_ROW),
        secagg=cohort(rig.general.pod, rig.peers),
    )
    view = await rig.general.outcome(spec_task)
    refused(view, "batch_too_small")
    # Lifting secure aggregation does not lift the batch floor.
    plain = rig.lifted.task("train", declarative(), hp=ONE_ROW, weights=await rig.lifted.pinned(declarative(), ONE_ROW))
    refused(await rig.lifted.outcome(plain), "batch_too_small")
    await nothing_recoverable(rig, view)


async def test_plain_train_is_refused_secure_aggregation_required(rig: PrivacyRig) -> None:
    for attacker in (rig.general, rig.owner):
        weights = await attacker.pinned(declarative(), PLAIN)
        view = await attacker.outcome(attacker.task("train", declarative(), hp=PLAIN, weights=weights))
        refused(view, "secure_aggregation_required")
        await nothing_recoverable(rig, view)


async def test_secure_aggregation_is_lifted_only_for_the_modeller_whose_entry_lifts_it(
    rig: PrivacyRig, plain_update: tuple[Any, ResultView]
) -> None:
    task, view = plain_update
    assert view.status == "done", view
    assert view.result is not None and view.result.payload.blob is not None
    assert view.result.payload.blob.encoding == "safetensors"
    update = load(await rig.lifted.blob(view))
    assert task.weights is not None
    pinned_path = rig.lifted.work / "pinned.safetensors"
    pinned = load((await rig.lifted.client.download_blob(task.weights.sha256, pinned_path)).read_bytes())
    assert {n: a.shape for n, a in update.items()} == {n: a.shape for n, a in pinned.items()}
    assert all(a.dtype == np.float32 for a in update.values())
    assert view.result.payload.n_rows == rig.secrets.n_rows["train"]
    await nothing_recoverable(rig, view)
    # The same task signed by the owner (default floor) is refused.
    same = rig.owner.task("train", declarative(), hp=PLAIN, weights=task.weights)
    refused(await rig.owner.outcome(same), "secure_aggregation_required")


async def test_evaluate_on_a_tiny_split_is_refused_split_too_small(rig: PrivacyRig) -> None:
    # The test part of a few rows hands their targets back through the loss.
    tiny = DataSelection(target="TARGET", columns=FEATURES, split=Split(train=98, validation=1, test=1))
    view = await rig.owner.outcome(rig.owner.task("evaluate", declarative(), data=tiny))
    refused(view, "split_too_small")
    await nothing_recoverable(rig, view)


async def test_split_that_is_small_only_once_prepared_fails_too_few_rows(rig: PrivacyRig) -> None:
    # FOLLOWUP is set on 60 of 700 rows: 20 % of the table passes the estimate, 20 % of 60 rows does not.
    sparse = SELECTION.model_copy(update={"target": FOLLOWUP})
    view = await rig.owner.outcome(rig.owner.task("evaluate", declarative(), data=sparse))
    failed(view, "too_few_rows")
    await nothing_recoverable(rig, view)


async def test_train_without_pinned_weights_is_refused_weights_not_pinned(rig: PrivacyRig) -> None:
    refused(await rig.lifted.outcome(rig.lifted.task("train", declarative(), hp=PLAIN)), "weights_not_pinned")
    secure = rig.owner.task("train", declarative(), hp=PLAIN, secagg=cohort(rig.owner.pod, rig.peers))
    view = await rig.owner.outcome(secure)
    refused(view, "weights_not_pinned")
    await nothing_recoverable(rig, view)


async def test_more_optimiser_steps_than_the_floor_allows_is_refused_too_many_steps(rig: PrivacyRig) -> None:
    weights = await rig.lifted.pinned(declarative(), PLAIN)
    train_rows = 700 * SELECTION.split.train // 100
    epochs = MAX_EFFECTIVE_STEPS // math.ceil(train_rows / 32) + 1
    for hp in (Hyperparameters(epochs=epochs, batch_size=32), Hyperparameters(steps=MAX_EFFECTIVE_STEPS + 1)):
        view = await rig.lifted.outcome(rig.lifted.task("train", declarative(), hp=hp, weights=weights))
        refused(view, "too_many_steps")
    await nothing_recoverable(rig, view)


async def test_steps_are_counted_again_on_the_prepared_rows(rig: PrivacyRig) -> None:
    # The verifier estimates 420 training rows from the table's 700; the stratified split prepares a few
    # more. A batch size where that crosses into one more batch per epoch passes the estimate and not the
    # exact count.
    estimated, exact = 700 * SELECTION.split.train // 100, rig.secrets.n_rows["train"]
    found = [
        (batch, MAX_EFFECTIVE_STEPS // math.ceil(estimated / batch)) for batch in range(32, 200)
        if MAX_EFFECTIVE_STEPS // math.ceil(estimated / batch) * math.ceil(exact / batch) > MAX_EFFECTIVE_STEPS
    ]
    assert found, f"no batch size crosses between {estimated} and {exact} rows"
    batch, epochs = found[0]
    hp = Hyperparameters(epochs=epochs, batch_size=batch)
    weights = await rig.lifted.pinned(declarative(), hp)
    view = await rig.lifted.outcome(rig.lifted.task("train", declarative(), hp=hp, weights=weights))
    failed(view, "too_many_steps")
    await nothing_recoverable(rig, view)


async def test_a_task_that_ran_and_is_delivered_again_under_another_label_is_refused_as_a_replay(
    rig: PrivacyRig, plain_update: tuple[Any, ResultView]
) -> None:
    # The hub is an adversary: it re-delivers a task that already released an update, hoping for a second.
    task, first = plain_update
    assert first.status == "done", first
    original = rig.hub.storage.get_task(task.task_id)
    assert original is not None
    label = str(uuid.uuid4())
    rig.hub.storage.add_task(HubTaskRecord(task_id=label, modeller_id=original.modeller_id,
                                        envelope=original.envelope, pods=original.pods, created_at=original.created_at))
    # Any submission wakes the hub's push to the pod, which then sends every pending delivery.
    nudge = rig.lifted.task("train", declarative(), hp=PLAIN)
    refused(await rig.lifted.outcome(nudge), "weights_not_pinned")
    await settle(lambda: rig.hub.storage.deliveries(label)[0].refusal is not None, timeout_s=20)
    assert rig.hub.storage.deliveries(label)[0].refusal == "replay"
    posted = [path for path, _ in rig.traffic.for_task(task.task_id) if path == "/v1/pod/results"]
    assert len(posted) == 1 and len(rig.hub.storage.results(task.task_id)) == 1
