"""A secure train on too small a cohort fails before any task is sent, and a pod's refusal is called one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pod_agent.errors import ModellerError
from pod_agent.modeller import ModellerClient, build_task
from pod_agent.modeller.fedavg import FedAvg, FedAvgPlan
from pod_agent.modeller.secure_round import run_secure_round
from pod_agent.protocol import IdentityKey
from pod_agent.protocol.messages import DataSelection, ModelRef, SecAggParams

_MODEL = ModelRef(style="module", name="net", class_name="Net", source="class Net: pass\n", sha256="b" * 64)


def _plan(pods: list[str], **overrides: Any) -> FedAvgPlan:
    return FedAvgPlan(model=_MODEL, pods=pods, selection=DataSelection(target="y"), rounds=1, **overrides)


async def test_secure_train_on_one_pod_fails_up_front_and_sends_nothing(
    local_hub: Any, list_pod: Any, tmp_path: Path
) -> None:
    list_pod(local_hub.storage, "pod-a")
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        await client.register("m")
        with pytest.raises(ModellerError, match=r"secure aggregation needs at least 3 pods .* has 1: add pods, or "
                                                r"train with --plain"):
            await FedAvg(client, _plan(["pod-a"]), work_dir=tmp_path).run()
    assert local_hub.storage.pending_tasks("pod-a") == []


async def test_a_cohort_naming_a_pod_twice_is_refused(local_hub: Any, tmp_path: Path) -> None:
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        with pytest.raises(ModellerError, match="names a pod more than once"):
            await FedAvg(client, _plan(["pod-a", "pod-b", "pod-a"], secure=None), work_dir=tmp_path).run()


async def test_a_round_the_pods_refuse_says_refused_with_their_codes(
    local_hub: Any, list_pod: Any, tmp_path: Path
) -> None:
    for name in ("pod-a", "pod-b"):
        list_pod(local_hub.storage, name)
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        await client.register("m")
        secagg = SecAggParams(
            prime_q=2**20,
            precision=2**16,
            num_workers=2,
            round=1,
            advert_timeout_s=30.0,
            stage_timeout_s=5.0,
        )
        cohort = await client.cohort(["pod-a", "pod-b"])
        task = build_task(modeller_id=client.key.key_id, cohort=cohort, kind="train",
                          model=_MODEL, data=DataSelection(target="y"), secagg=secagg)
        await client.submit_task(task, cohort)
        for pod in ("pod-a", "pod-b"):
            local_hub.storage.record_refusal(task.task_id, pod, "too_few_pods", now=int(time.time()))
        started = time.monotonic()
        with pytest.raises(ModellerError) as raised:
            await run_secure_round(client, task, cohort, vector_size=4, work_dir=tmp_path, min_pods=2)
    assert "refused: {'pod-a': 'too_few_pods', 'pod-b': 'too_few_pods'}" in str(raised.value)
    assert "dropped" not in str(raised.value)
    assert time.monotonic() - started < 10  # refusals end the wait; the advert timeout is not waited out
