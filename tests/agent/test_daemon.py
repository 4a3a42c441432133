"""The daemon in-process against a real loopback hub: fallback to long polling, refusals, failures."""

from __future__ import annotations

import asyncio
import subprocess
import time
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

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
from pod_agent.protocol import IdentityKey


@dataclass
class Rig:
    hub_url: str
    modeller: ModellerClient
    stop: asyncio.Event
    agent: asyncio.Task[None]


def _settings(tmp_path: Path, hub_url: str, modeller: IdentityKey, data: Path) -> PodSettings:
    state_dir = tmp_path / "pod"
    state_dir.mkdir()
    IdentityKey.generate().save(state_dir / "identity.pem")
    return PodSettings(
        pod=PodSection(name="pod-a", state_dir=state_dir),
        hub=HubSection(url=hub_url, heartbeat_s=0.5, backoff_initial_s=0.05, backoff_cap_s=0.5),
        datasource=DatasourceSection(path=data),
        security=SecuritySection(
            sandbox="none",
            modellers=[ModellerPolicy(name="m", public_key=modeller.public.to_b64(), role="super")],
        ),
        sandbox_limits=SandboxLimitsSection(warm_worker=False),
        ops=OpsSection(health_port=0),
    )


@web.middleware
async def _no_websocket(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path == "/v1/pod/ws":
        return web.json_response({"error": "no websockets here"}, status=404)
    return await handler(request)


@pytest.fixture(params=["websocket", "long-poll"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    data = tmp_path / "small.csv"
    data.write_text("age,hours,TARGET\n" + "".join(f"{20 + i % 40},{i % 60},{'>50K' if i % 3 else '<=50K'}\n" for i in range(100)))
    storage = SqliteStorage(":memory:")
    app = create_app(storage)
    if request.param == "long-poll":
        app.middlewares.insert(0, _no_websocket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    key = IdentityKey.generate()
    stop = asyncio.Event()
    agent = asyncio.create_task(run_agent(_settings(tmp_path, url, key, data), stop=stop))
    async with ModellerClient(url, key) as modeller:
        await modeller.register("m")
        for _ in range(200):
            if [p for p in await modeller.pods() if p.online]:
                break
            await asyncio.sleep(0.05)
        yield Rig(url, modeller, stop, agent)
    stop.set()
    await asyncio.wait_for(agent, 10)
    await runner.cleanup()
    storage.close()


async def _schema_hash(rig: Rig) -> str:
    return (await rig.modeller.pods())[0].schema_hash


async def test_schema_stats_round_trip_over_websocket_or_long_poll(rig: Rig) -> None:
    task = build_task(modeller_id=rig.modeller.key.key_id, pods=["pod-a"], kind="schema-stats", schema_hash=await _schema_hash(rig))
    await rig.modeller.submit_task(task)
    answers = await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20)
    result = answers["pod-a"]
    assert isinstance(result, VerifiedResult) and result.payload.status == "done"
    assert result.payload.metrics["rows"] == result.payload.n_rows == 100


async def test_task_signed_by_an_unknown_modeller_is_refused_with_its_code_only(rig: Rig) -> None:
    stranger = IdentityKey.generate()
    async with ModellerClient(rig.hub_url, stranger) as other:
        await other.register("stranger")
        task = build_task(modeller_id=stranger.key_id, pods=["pod-a"], kind="schema-stats", schema_hash=await _schema_hash(rig))
        await other.submit_task(task)
        answers = await other.wait_results(task.task_id, ["pod-a"], timeout_s=20)
    assert answers == {"pod-a": "unknown_signer"}


async def test_policy_refusal_comes_back_signed_by_the_pod(rig: Rig) -> None:
    task = build_task(modeller_id=rig.modeller.key.key_id, pods=["pod-a"], kind="schema-stats", schema_hash="0" * 64)
    await rig.modeller.submit_task(task)
    answers = await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20)
    result = answers["pod-a"]
    assert isinstance(result, VerifiedResult)
    assert (result.payload.status, result.payload.reason) == ("refused", "schema_mismatch")


def test_the_daemon_does_not_import_torch_at_start() -> None:
    code = "import sys, pod_agent.agent.daemon, pod_agent.cli.run; print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_task_not_yet_valid_is_left_with_the_hub_unacknowledged(rig: Rig) -> None:
    task = build_task(
        modeller_id=rig.modeller.key.key_id, pods=["pod-a"], kind="schema-stats", schema_hash=await _schema_hash(rig),
        now=int(time.time()) + 600,
    )
    await rig.modeller.submit_task(task)
    await asyncio.sleep(1.5)
    status = await rig.modeller.status(task.task_id)
    assert status.pods["pod-a"] == {"acked": False, "refusal": None, "result": None, "progress": None}
