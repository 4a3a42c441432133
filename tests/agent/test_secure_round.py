"""SecAgg+ rounds through a real loopback hub: the full stage flow, dropouts at every stage, one release
per starting point. Pods run their real round code with real keys and state DBs; training is replaced
by a deterministic update so that the unmasked sum can be compared with a plain computation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from round_support import RoundRig, decoded, round_rig, settle
from task_support import cohort_of, pods_of

from pod_agent.agent.secure_round import RoundOutput, check_unreleased
from pod_agent.errors import ModellerError, TaskFailed
from pod_agent.hub import HubLimits
from pod_agent.modeller.secure_round import run_secure_round

# The fixed-point sum decodes within 1/precision per pod and value.
PRECISION = 2**16


async def _round(rig: RoundRig, *, cut: dict[str, str] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    task = rig.task()
    await rig.modeller.submit_task(task, cohort_of(task))
    pods = await rig.run_pods(task, cut=cut)
    outcome = await run_secure_round(
        rig.modeller, task, cohort_of(task), vector_size=rig.layout(task).size, work_dir=rig.tmp
    )
    return task, outcome, await settle(pods, cut=list(cut or {}))


def _assert_plain_mean_of(rig: RoundRig, task: Any, outcome: Any, survivors: list[str]) -> None:
    assert list(outcome.survivors) == survivors
    summed = decoded(rig, task, outcome.total, survivors)
    assert summed.total_rows == sum(rig.pods[p].rows for p in survivors)
    for name, expected in rig.plain_mean(survivors).items():
        np.testing.assert_allclose(summed.mean[name], expected, rtol=0, atol=len(survivors) / PRECISION, err_msg=name)
    assert summed.metrics["train_loss"] == pytest.approx(
        sum(rig.pods[p].rows * (0.5 + rig.pods[p].rows / 1000) for p in survivors) / summed.total_rows, abs=1e-3
    )


async def test_a_round_without_dropouts_unmasks_to_the_plain_weighted_mean(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task, outcome, pods = await _round(rig)
        assert all(isinstance(result, RoundOutput) for result in pods.values()), pods
        _assert_plain_mean_of(rig, task, outcome, ["pod-0", "pod-1", "pod-2"])
        # Every stage carried one signed message per sender, and nobody's vector is its update in clear.
        assert sorted(rig.messages(task, "unmask")) == ["pod-0", "pod-1", "pod-2"]
        for name, result in pods.items():
            # The pipeline's stage clock hears each local step once, in order (bench/rounds.py splits on them).
            assert rig.pods[name].stages == ["encoded", "masking", "masked", "uploaded"]
            masked = np.frombuffer(result.blob_path.read_bytes(), dtype="<u8")
            assert outcome.blobs[name].read_bytes() == result.blob_path.read_bytes()
            assert not np.array_equal(masked[:4], (rig.pods[name].update["layer.bias"] * PRECISION).astype("<u8"))


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param({"pod-1": "advert"}, id="after-advertising"),
        pytest.param({"pod-2": "shares"}, id="after-sharing"),
        pytest.param({"pod-0": "masked"}, id="after-uploading-the-masked-input"),
        pytest.param({"pod-1": "advert", "pod-3": "masked"}, id="two-of-five-at-different-stages"),
        pytest.param({"pod-2": "shares", "pod-4": "shares"}, id="two-of-five-after-sharing"),
    ],
)
async def test_pods_cut_off_at_any_stage_leave_the_round_which_completes_with_the_survivors_sum(
    tmp_path: Path, cut: dict[str, str]
) -> None:
    n_pods = 5 if len(cut) == 2 else 3  # n - t = 1 of 3, 2 of 5
    async with round_rig(tmp_path, n_pods) as rig:
        task, outcome, pods = await _round(rig, cut=cut)
        # A pod cut after its masked input is still in the sum (its self mask rebuilt from its neighbours).
        survivors = sorted(p for p in rig.pods if p not in cut or cut[p] == "masked")
        _assert_plain_mean_of(rig, task, outcome, survivors)
        assert list(outcome.dropped) == sorted(p for p, stage in cut.items() if stage == "shares")
        assert all(pods[p] == "cut" for p in cut)
        assert all(isinstance(pods[p], RoundOutput) for p in rig.pods if p not in cut), pods
        # A pod cut before the cohort's shares were in never began masking: all its time after encoding waited.
        assert all(rig.pods[p].stages == ["encoded"] for p, stage in cut.items() if stage != "masked")
        # One task, one round: nothing was retried (one roster per cohort pod).
        assert len(rig.storage.round_messages(task.task_id, 1, "roster")) == len(rig.pods)


async def test_a_second_round_from_the_same_weights_is_refused_already_released(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 4) as rig:
        await _round(rig)
        # The modeller retries from the same starting weights without pod-3: the difference of the two sums
        # would be pod-3's update.
        retry = rig.task(["pod-0", "pod-1", "pod-2"], round_index=2)
        for name in pods_of(retry):
            # What the pipeline checks before it trains ...
            with pytest.raises(TaskFailed, match="already released") as early:
                check_unreleased(rig.pods[name].state, retry)
            assert early.value.code == "already_released"
        # ... and what the round itself enforces, in the transaction that decides a release.
        await rig.modeller.submit_task(retry, cohort_of(retry))
        pods = await rig.run_pods(retry)
        with pytest.raises(ModellerError, match="only 0 pods"):
            await run_secure_round(
                rig.modeller, retry, cohort_of(retry), vector_size=rig.layout(retry).size, work_dir=rig.tmp
            )
        outcomes = await settle(pods)
        for name in pods_of(retry):
            assert isinstance(outcomes[name], TaskFailed) and outcomes[name].code == "already_released", outcomes
        assert rig.messages(retry, "masked") == [] and rig.messages(retry, "unmask") == []


async def test_a_pod_answers_nothing_after_its_round_ended_and_keeps_no_secret(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        _task, _, pods = await _round(rig)
        assert all(isinstance(result, RoundOutput) for result in pods.values())
        # Nothing of the round's secrets reached the pod's state directory: only its state DB is there.
        for name in rig.pods:
            assert sorted(p.name for p in (tmp_path / name).iterdir() if not p.name.startswith("state.sqlite")) == []
        await asyncio.sleep(0)


async def test_a_sparse_round_where_each_pod_knows_only_its_neighbourhood_unmasks_the_survivors_mean(
    tmp_path: Path,
) -> None:
    """20 pods: k = 16 of 19, so no pod is shown the whole cohort. Two pods never take part (they count as
    dropped before sharing for their neighbours), one is cut after its shares (its mask keys are rebuilt)."""
    async with round_rig(tmp_path, 20) as rig:
        task = rig.task()
        await rig.modeller.submit_task(task, cohort_of(task))
        absent = {"pod-18", "pod-19"}
        pods = await rig.run_pods(task, cut={"pod-7": "shares"}, pods=[p for p in pods_of(task) if p not in absent])
        outcome = await run_secure_round(
            rig.modeller, task, cohort_of(task), vector_size=rig.layout(task).size, work_dir=rig.tmp
        )
        settled = await settle(pods, cut=["pod-7"])
        survivors = sorted(set(rig.pods) - absent - {"pod-7"})
        _assert_plain_mean_of(rig, task, outcome, survivors)
        assert list(outcome.dropped) == ["pod-7"]
        assert all(isinstance(settled[p], RoundOutput) for p in survivors), settled


async def test_the_modeller_s_per_pod_messages_wait_out_the_hub_s_request_rate(tmp_path: Path) -> None:
    """A hub that takes a burst of 8 requests a key, then 25 a second: the modeller's three per-pod messages
    to each of 5 pods, beside its polls, go over it (429) and are posted again until they are taken."""
    async with round_rig(tmp_path, 5, limits=HubLimits(rate_per_s=25.0, rate_burst=8)) as rig:
        task, outcome, pods = await _round(rig)
        assert all(isinstance(result, RoundOutput) for result in pods.values()), pods
        _assert_plain_mean_of(rig, task, outcome, sorted(rig.pods))
