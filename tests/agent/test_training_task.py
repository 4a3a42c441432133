"""A real train task through the daemon: data -> sandbox(training.worker) -> contract -> (secagg) -> result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from safetensors.numpy import load

from pod_agent.agent import run_agent
from pod_agent.config.settings import (
    DatasourceSection,
    HubSection,
    ModellerPolicy,
    OpsSection,
    PodSection,
    PodSettings,
    SandboxLimitsSection,
    SecuritySection,
)
from pod_agent.hub import SqliteStorage, create_app
from pod_agent.modeller import ModellerClient, VerifiedResult, build_task
from pod_agent.protocol import IdentityKey, source_sha256, spec_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, Participant, SecAggParams
from pod_agent.secagg import RoundKeyPair

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
    "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1,
}


@pytest.fixture
async def hub_and_pod(tmp_path: Path) -> AsyncIterator[tuple[ModellerClient, Any]]:
    data = tmp_path / "small.csv"
    data.write_text("age,hours,TARGET\n" + "".join(
        f"{20 + i % 40},{i % 60},{'>50K' if (i % 40) > 20 else '<=50K'}\n" for i in range(300)))
    storage = SqliteStorage(":memory:")
    runner = web.AppRunner(create_app(storage))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    key = IdentityKey.generate()
    (tmp_path / "pod").mkdir()
    IdentityKey.generate().save(tmp_path / "pod" / "identity.pem")
    settings = PodSettings(
        pod=PodSection(name="pod-a", state_dir=tmp_path / "pod"),
        hub=HubSection(url=url, heartbeat_s=0.5, backoff_initial_s=0.05, backoff_cap_s=0.5),
        datasource=DatasourceSection(path=data),
        security=SecuritySection(sandbox="none", modellers=[
            ModellerPolicy(name="m", public_key=key.public.to_b64(), role="super")]),
        sandbox_limits=SandboxLimitsSection(warm_worker=False),
        ops=OpsSection(health_port=0),
    )
    stop = asyncio.Event()
    agent = asyncio.create_task(run_agent(settings, stop=stop))
    async with ModellerClient(url, key) as modeller:
        await modeller.register("m")
        for _ in range(200):
            pods = await modeller.pods()
            if pods and pods[0].online:
                break
            await asyncio.sleep(0.05)
        yield modeller, pods[0]
    stop.set()
    await asyncio.wait_for(agent, 30)
    await runner.cleanup()
    storage.close()


def _train_task(modeller: ModellerClient, pod: Any, *, secagg: SecAggParams | None = None) -> Any:
    return build_task(
        modeller_id=modeller.key.key_id, pods=["pod-a"], kind="train", schema_hash=pod.schema_hash,
        model=ModelRef(style="declarative", name="linear", spec=SPEC, sha256=spec_sha256(SPEC)),
        data=DataSelection(target="TARGET"), hyperparameters=Hyperparameters(epochs=1, batch_size=32),
        secagg=secagg,
    )


async def test_declarative_model_trains_in_the_sandbox_and_the_update_comes_back(
    hub_and_pod: tuple[ModellerClient, Any], tmp_path: Path
) -> None:
    modeller, pod = hub_and_pod
    task = _train_task(modeller, pod)
    await modeller.submit_task(task)
    result = (await modeller.wait_results(task.task_id, ["pod-a"], timeout_s=120))["pod-a"]
    assert isinstance(result, VerifiedResult), result
    assert result.payload.status == "done", result.payload.reason
    assert result.payload.blob is not None and result.payload.blob.encoding == "safetensors"
    path = await modeller.download_blob(result.payload.blob.sha256, tmp_path / "update.safetensors")
    update = load(path.read_bytes())
    assert len(update) == 2 and all(name.endswith(("weight", "bias")) for name in update)
    assert all(np.isfinite(a).all() and np.abs(a).sum() > 0 for a in update.values())
    assert result.payload.n_rows > 0

    # Under secure aggregation the same kind of update leaves only as a masked fixed-point vector.
    me = RoundKeyPair.from_private_bytes((tmp_path / "pod" / "round_key.bin").read_bytes())
    peers = [RoundKeyPair.generate() for _ in range(2)]
    params = SecAggParams(
        prime_q=2**40, precision=2**16, num_workers=3, participants=[
            Participant(pod="pod-a", key_id=pod.key_id, round_public_key=me.public_b64),
            *(Participant(pod=f"pod-{c}", key_id=c * 64, round_public_key=p.public_b64) for c, p in zip("bc", peers)),
        ],
    )
    secure = _train_task(modeller, pod, secagg=params)
    await modeller.submit_task(secure)
    masked = (await modeller.wait_results(secure.task_id, ["pod-a"], timeout_s=120))["pod-a"]
    assert isinstance(masked, VerifiedResult) and masked.payload.status == "done", masked
    assert masked.payload.blob is not None and masked.payload.blob.encoding == "secagg-u64"
    raw = (await modeller.download_blob(masked.payload.blob.sha256, tmp_path / "masked.bin")).read_bytes()
    assert b"layers.0" not in raw and len(raw) % 8 == 0


async def test_bad_model_fails_with_the_workers_fixed_reason(hub_and_pod: tuple[ModellerClient, Any]) -> None:
    modeller, pod = hub_and_pod
    source = "class M: pass\n"
    task = build_task(
        modeller_id=modeller.key.key_id, pods=["pod-a"], kind="train", schema_hash=pod.schema_hash,
        model=ModelRef(style="module", name="m", class_name="M", source=source, sha256=source_sha256(source)),
        data=DataSelection(target="TARGET"), hyperparameters=Hyperparameters(epochs=1),
    )
    await modeller.submit_task(task)
    result = (await modeller.wait_results(task.task_id, ["pod-a"], timeout_s=120))["pod-a"]
    assert isinstance(result, VerifiedResult) and result.payload.status == "failed"
    assert result.payload.reason == "wrong_base_class"
