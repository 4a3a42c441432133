"""The owner's controls on a live agent: the review queue over a real hub, and SIGHUP reloading pod.toml.

The agent runs in-process from a real pod.toml against a real loopback hub; review decisions are made
through the state DB from outside the agent, as `pod-agent review` does from another process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from task_support import cohort_of, entries

from pod_agent.agent import run_agent
from pod_agent.config import load_settings
from pod_agent.hub import SqliteStorage, create_app, listening
from pod_agent.modeller import ModellerClient, VerifiedResult, build_task
from pod_agent.protocol import IdentityKey, spec_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, TaskPayload
from pod_agent.state import PodState, TaskStatus

SPEC: dict[str, Any] = {
    "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
    "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1,
}
LINEAR = ModelRef(style="declarative", name="linear", spec=SPEC, sha256=spec_sha256(SPEC))
CSV = "age,hours,TARGET\n" + "".join(f"{20 + i % 40},{i % 60},{'>50K' if (i % 40) > 20 else '<=50K'}\n"
                                     for i in range(1500))


@dataclass
class Rig:
    config: Path
    state_path: Path
    hub_url: str
    modeller: ModellerClient
    schema_hash: str
    base_toml: str

    def task(self, *, model: ModelRef | None = LINEAR, **fields: Any) -> TaskPayload:
        kind = "evaluate" if model is not None else "schema-stats"
        extra: dict[str, Any] = {"model": model, "data": DataSelection(target="TARGET"),
                                 "hyperparameters": Hyperparameters(batch_size=32)} if model is not None else {}
        fields.setdefault("modeller_id", self.modeller.key.key_id)
        return build_task(cohort=entries(["pod-a"], self.schema_hash), kind=kind, **extra, **fields)

    async def outcome(self, task: TaskPayload, *, modeller: ModellerClient | None = None) -> VerifiedResult | str:
        client = modeller or self.modeller
        return (await client.wait_results(task.task_id, ["pod-a"], timeout_s=60))["pod-a"]

    async def local_status(self, task_id: str, wanted: TaskStatus, *, within_s: float = 20) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with PodState.open(self.state_path) as state:
                record = state.get_task(task_id)
            if record is not None and record.status is wanted:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"task {task_id} never became {wanted.value}")


def _toml(*, url: str, state_dir: Path, data: Path, modellers: list[tuple[str, IdentityKey]], review: bool) -> str:
    entries = "".join(
        f'[[security.modellers]]\nname = "{name}"\npublic_key = "{key.public.to_b64()}"\nrole = "super"\n\n'
        for name, key in modellers
    )
    return (
        f'[pod]\nname = "pod-a"\nstate_dir = "{state_dir}"\n\n'
        f'[hub]\nurl = "{url}"\nheartbeat_s = 0.5\nbackoff_initial_s = 0.05\nbackoff_cap_s = 0.5\n\n'
        f'[datasource]\npath = "{data}"\n\n'
        f'[sandbox_limits]\nwarm_worker = false\n\n[ops]\nhealth_port = 0\n\n'
        f'[privacy]\nrequire_secure_aggregation = false\n\n'
        f'[security]\nsandbox = "none"\nreview = {"true" if review else "false"}\nclock_skew_s = 0\n\n{entries}'
    )


@asynccontextmanager
async def _rig(tmp_path: Path, *, review: bool) -> AsyncIterator[Rig]:
    data = tmp_path / "data.csv"
    data.write_text(CSV)
    state_dir = tmp_path / "pod"
    state_dir.mkdir()
    IdentityKey.generate().save(state_dir / "identity.pem")
    key = IdentityKey.generate()
    storage = SqliteStorage(":memory:")
    async with listening(create_app(storage), port=0) as url:
        config = tmp_path / "pod.toml"
        text = _toml(url=url, state_dir=state_dir, data=data, modellers=[("m", key)], review=review)
        config.write_text(text)
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(load_settings(config), stop=stop, config_path=config))
        async with ModellerClient(url, key) as modeller:
            await modeller.register("m")
            for _ in range(400):
                pods = await modeller.pods()
                if pods and pods[0].online:
                    break
                await asyncio.sleep(0.05)
            yield Rig(config, state_dir / "state.sqlite", url, modeller, pods[0].schema_hash, text)
        stop.set()
        await asyncio.wait_for(agent, 30)
    storage.close()


async def _progress_stage(modeller: ModellerClient, task_id: str, wanted: str) -> None:
    for _ in range(200):
        progress = (await modeller.status(task_id)).pods["pod-a"].get("progress")
        if progress is not None and progress.get("stage") == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hub never showed stage {wanted!r} for task {task_id}")


async def _sighup_and_wait(caplog: pytest.LogCaptureFixture, marker: str) -> None:
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(200):
        if marker in caplog.text:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {marker!r} in the log after SIGHUP")


@pytest.mark.slow
async def test_an_approved_task_runs_without_resending_and_a_reload_while_it_runs_lets_it_finish(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One worker start (torch) serves two behaviours: approval of a pending task, and SIGHUP during a task.
    caplog.set_level(logging.INFO, logger="pod_agent.agent.daemon")
    async with _rig(tmp_path, review=True) as rig:
        task = rig.task()
        await rig.modeller.submit_task(task, cohort_of(task))
        await _progress_stage(rig.modeller, task.task_id, "pending_review")
        await rig.local_status(task.task_id, TaskStatus.PENDING_REVIEW)
        with PodState.open(rig.state_path) as state:
            state.decide_review(task.task_id, approve=True, by="carol", now=int(time.time()))
        await rig.local_status(task.task_id, TaskStatus.RUNNING)
        rig.config.write_text(rig.base_toml.replace("clock_skew_s = 0", "clock_skew_s = 5"))
        await _sighup_and_wait(caplog, "policy reloaded")
        result = await rig.outcome(task)
        assert isinstance(result, VerifiedResult) and result.payload.status == "done", result


async def test_a_rejected_task_comes_back_refused_review_rejected_signed_by_the_pod(tmp_path: Path) -> None:
    async with _rig(tmp_path, review=True) as rig:
        task = rig.task()
        await rig.modeller.submit_task(task, cohort_of(task))
        await rig.local_status(task.task_id, TaskStatus.PENDING_REVIEW)
        with PodState.open(rig.state_path) as state:
            state.decide_review(task.task_id, approve=False, by="carol", now=int(time.time()))
        result = await rig.outcome(task)
        assert isinstance(result, VerifiedResult)
        assert (result.payload.status, result.payload.reason) == ("refused", "review_rejected")


async def test_a_task_whose_expiry_passes_while_pending_is_refused_as_expired(tmp_path: Path) -> None:
    async with _rig(tmp_path, review=True) as rig:
        task = rig.task(lifetime_s=2)
        await rig.modeller.submit_task(task, cohort_of(task))
        await rig.local_status(task.task_id, TaskStatus.PENDING_REVIEW)
        result = await rig.outcome(task)
        assert isinstance(result, VerifiedResult)
        assert (result.payload.status, result.payload.reason) == ("refused", "expired")


async def test_sighup_applies_a_valid_policy_and_keeps_the_old_one_when_the_file_is_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pod_agent.agent.daemon")
    async with _rig(tmp_path, review=False) as rig:
        newcomer = IdentityKey.generate()
        async with ModellerClient(rig.hub_url, newcomer) as other:
            await other.register("newcomer")
            refused = rig.task(model=None, modeller_id=newcomer.key_id)
            await other.submit_task(refused, cohort_of(refused))
            assert await rig.outcome(refused, modeller=other) == "unknown_signer"

            rig.config.write_text(rig.base_toml + f'[[security.modellers]]\nname = "newcomer"\n'
                                  f'public_key = "{newcomer.public.to_b64()}"\nrole = "general"\n')
            await _sighup_and_wait(caplog, "policy reloaded")
            admitted = rig.task(model=None, modeller_id=newcomer.key_id)
            await other.submit_task(admitted, cohort_of(admitted))
            result = await rig.outcome(admitted, modeller=other)
            assert isinstance(result, VerifiedResult) and result.payload.status == "done"

            rig.config.write_text(rig.base_toml + "[security.modellers.oops]\n")
            await _sighup_and_wait(caplog, "reload refused, the policy in force stays")
            still = rig.task(model=None, modeller_id=newcomer.key_id)
            await other.submit_task(still, cohort_of(still))
            result = await rig.outcome(still, modeller=other)
            assert isinstance(result, VerifiedResult) and result.payload.status == "done"
