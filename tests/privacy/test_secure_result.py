"""Under secure aggregation the modeller may learn a pod's train metrics and rows only as cohort sums:
nothing per pod in the clear. One real SecAgg+ round: the real pod trains a hostile model in its sandbox;
its two pinned peers take part with the pod's own round code (a zero update each, no training); the
modeller drives the round. One rig for the module.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from privacy_support import PrivacyRig, ResultView, SecureCohort, cohort, lightning, nothing_recoverable
from safetensors.numpy import load
from task_support import cohort_of, pods_of

from pod_agent.agent.hubclient import HubClient
from pod_agent.agent.secure_round import PodRoundContext, RoundOutput, run_secure_round
from pod_agent.config.settings import HubSection
from pod_agent.modeller.secure_round import SecureSum
from pod_agent.modeller.secure_round import run_secure_round as drive_round
from pod_agent.policy import TrustedPeers
from pod_agent.protocol import PublicKey
from pod_agent.protocol.hub_api import RoundMessages
from pod_agent.protocol.messages import Hyperparameters, TaskPayload
from pod_agent.secagg import Layout, floating_tensors
from pod_agent.state import PodState

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TRAIN = Hyperparameters(epochs=1, batch_size=32)
# Adverts are collected while the pod trains (a few seconds, more on a loaded host); later stages are quick.
ADVERT_S, STAGE_S = 90.0, 20.0


class _PeerLink:
    """A peer pod's round transport: the daemon's, over its own HubClient."""

    def __init__(self, hub: HubClient) -> None:
        self.hub = hub

    async def round_post(self, path: str, body: bytes) -> None:
        await self.hub.round_post(path, body)

    async def round_get(self, path: str, *, after: int, wait_s: float) -> RoundMessages:
        return await self.hub.round_get(path, after=after, wait_s=wait_s)

    async def put_blob(self, path: Path, sha256: str) -> None:
        await self.hub.put_blob(path, sha256)


async def _peer(
    rig: PrivacyRig, name: str, task: TaskPayload, update: dict[str, np.ndarray], work: Path
) -> RoundOutput:
    key = rig.peer_keys[name]
    trusted = TrustedPeers({rig.owner.pod.name: PublicKey.from_b64(rig.owner.pod.public_key),
                            **{n: k.public for n, k in rig.peer_keys.items()}})
    state = PodState.open(work / name / "state.sqlite")
    try:
        async with HubClient(HubSection(url=rig.hub.hub_url, request_timeout_s=10.0), key) as hub:
            ctx = PodRoundContext(me=name, key=key, peers=trusted, state=state,
                                  modeller_keys={rig.owner.client.key.key_id: rig.owner.client.key.public})
            return await run_secure_round(task, update, n_rows=200, metrics={"train_loss": 0.5}, ctx=ctx,
                                          link=_PeerLink(hub), blob_path=work / f"{name}.blob")
    finally:
        state.close()


def _params(rig: PrivacyRig) -> SecureCohort:
    return cohort(rig.owner.pod, rig.peers).with_params(
        metrics=["train_loss"], advert_timeout_s=ADVERT_S, stage_timeout_s=STAGE_S)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_round(rig: PrivacyRig, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ResultView]:
    """One secure train task of the hostile model through a whole round; its task and the pod's result."""
    work = tmp_path_factory.mktemp("round")
    model = lightning("clip_count")
    weights = await rig.owner.pinned(model, TRAIN)
    pinned = load((await rig.owner.client.download_blob(weights.sha256, work / "pinned.safetensors")).read_bytes())
    task = rig.owner.task("train", model, hp=TRAIN, weights=weights, secagg=_params(rig))
    await rig.owner.client.submit_task(task, cohort_of(task))
    zeros = {name: np.zeros_like(array) for name, array in floating_tensors(pinned).items()}
    assert task.secagg is not None
    size = Layout.from_arrays(zeros, task.secagg.metrics).size
    summed, pod, *peers = await asyncio.gather(
        drive_round(rig.owner.client, task, cohort_of(task), vector_size=size, work_dir=work),
        rig.owner.outcome(task),  # submitting again is a no-op; this waits for the pod's signed result
        *(_peer(rig, name, task, zeros, work) for name in rig.peer_keys),
        return_exceptions=True,
    )
    assert all(isinstance(o, RoundOutput) for o in peers), (summed, pod, peers)
    assert isinstance(summed, SecureSum) and isinstance(pod, ResultView), (summed, pod, peers)
    assert sorted(summed.survivors) == pods_of(task)
    return task, pod


async def test_a_secure_train_result_carries_no_metrics_and_no_row_count_in_clear(
    rig: PrivacyRig, secure_round: tuple[Any, ResultView]
) -> None:
    _, view = secure_round
    assert view.status == "done" and view.result is not None, view
    payload = view.result.payload
    assert payload.metrics == {} and payload.n_rows == 0
    assert payload.blob is not None and payload.blob.encoding.startswith("secagg-")
    # A pod's own loss is a per-pod fact too: no progress event of a secure task carries one.
    assert all(event.get("loss") is None for event in rig.traffic.progress(view.task_id))
    await nothing_recoverable(rig, view)


async def test_the_clip_count_beside_a_masked_update_carries_no_row(
    rig: PrivacyRig, secure_round: tuple[Any, ResultView]
) -> None:
    # How many values the bound clipped is the model's choice: it stays in the pod's local log.
    _, view = secure_round
    assert view.result is not None
    assert "clipped" not in view.result.envelope.payload
    assert "clipped" not in rig.traffic.text(view.task_id)


async def test_a_second_secure_round_from_the_same_weights_is_failed_already_released(
    rig: PrivacyRig, secure_round: tuple[Any, ResultView]
) -> None:
    # Two sums from the same starting weights, one with this pod and one without, would differ by its update.
    task, first = secure_round
    assert first.status == "done", first
    again = rig.owner.task("train", lightning("clip_count"), hp=TRAIN, weights=task.weights, secagg=_params(rig))
    view = await rig.owner.outcome(again)
    assert (view.status, view.reason) == ("failed", "already_released"), view
    assert view.result is not None and view.result.payload.blob is None and view.result.payload.n_rows == 0
    await nothing_recoverable(rig, view)
