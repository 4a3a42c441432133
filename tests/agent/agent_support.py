"""A real hub (in-process, loopback) with one real pod agent, ``pod-a``, online on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pod_agent.agent import run_agent
from pod_agent.config.settings import (
    DatasourceSection,
    HubSection,
    ModellerPolicy,
    OpsSection,
    PodSection,
    PodSettings,
    PrivacySection,
    SandboxLimitsSection,
    SecuritySection,
    TrainingSection,
)
from pod_agent.hub import SqliteStorage, create_app, listening
from pod_agent.modeller import ModellerClient, PodInfo
from pod_agent.protocol import IdentityKey


@dataclass
class HubWithAgent:
    hub_url: str
    modeller: ModellerClient
    pod: PodInfo
    storage: SqliteStorage  # the hub's own records, for tests that play a hostile hub
    pod_hub_url: str  # the pod's hub.url: hub_url, or the other process's


@asynccontextmanager
async def hub_with_agent(
    tmp_path: Path,
    csv_text: str,
    *,
    policy: dict[str, Any] | None = None,
    security: dict[str, Any] | None = None,
    privacy: dict[str, Any] | None = None,
    sandbox_limits: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    hub: dict[str, Any] | None = None,
    extra_modellers: Sequence[ModellerPolicy] = (),
    middlewares: Sequence[Any] = (),
    other_process: Sequence[Any] | None = None,
    stop_within_s: float = 30,
) -> AsyncIterator[HubWithAgent]:
    """``csv_text`` is the pod's datasource; ``policy`` and ``security`` are extra fields of the modeller's
    ModellerPolicy (role super) and of the SecuritySection (sandbox none); ``privacy``, ``sandbox_limits``,
    ``training`` and ``hub`` are fields of those sections (warm_worker off unless given); ``extra_modellers`` are more
    policy entries (their clients are the test's); ``middlewares`` go in front of the hub's own.
    ``other_process`` (its middlewares): the pod's ``hub.url`` is a second server of the same hub (one storage),
    the rig's ``hub_url`` its ``hub.fallback_urls``."""
    data = tmp_path / "small.csv"
    data.write_text(csv_text)
    state_dir = tmp_path / "pod"
    state_dir.mkdir()
    IdentityKey.generate().save(state_dir / "identity.pem")
    storage = SqliteStorage(":memory:")
    app = create_app(storage)
    app.middlewares[:0] = middlewares
    modeller_key = IdentityKey.generate()
    async with listening(app, port=0) as url, contextlib.AsyncExitStack() as stack:
        section = HubSection(url=url, **{"heartbeat_s": 0.5, "backoff_initial_s": 0.05, "backoff_cap_s": 0.5,
                                         **(hub or {})})
        if other_process is not None:
            other = create_app(storage)
            other.middlewares[:0] = other_process
            section = section.model_copy(update={"url": await stack.enter_async_context(listening(other, port=0)),
                                                 "fallback_urls": [url]})
        settings = PodSettings(
            pod=PodSection(name="pod-a", state_dir=state_dir),
            hub=section,
            datasource=DatasourceSection(path=data),
            security=SecuritySection(**{"sandbox": "none", **(security or {})}, modellers=[
                ModellerPolicy(name="m", public_key=modeller_key.public.to_b64(), role="super", **(policy or {})),
                *extra_modellers]),
            privacy=PrivacySection(**(privacy or {})),
            sandbox_limits=SandboxLimitsSection(**{"warm_worker": False, **(sandbox_limits or {})}),
            training=TrainingSection(**(training or {})),
            ops=OpsSection(health_port=0),
        )
        stop = asyncio.Event()
        agent = asyncio.create_task(run_agent(settings, stop=stop))
        async with ModellerClient(url, modeller_key) as modeller:
            await modeller.register("m")
            for _ in range(200):
                pods = await modeller.pods()
                if pods and pods[0].online:
                    break
                await asyncio.sleep(0.05)
            yield HubWithAgent(url, modeller, pods[0], storage, settings.hub.url)
        stop.set()
        await asyncio.wait_for(agent, stop_within_s)
    storage.close()

