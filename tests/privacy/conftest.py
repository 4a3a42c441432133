"""The privacy corpus's rig, one per test module: a real loopback hub, a real pod agent at sandbox level
strict on 700 Adult rows, and three modellers as the pod's policy knows them.

- ``owner``: a super modeller under the default floor (secure aggregation required);
- ``lifted``: a super modeller whose own ``privacy`` table lifts secure aggregation (only for it),
  with predict permitted;
- ``general``: a general modeller (declarative models only).

The pod's floor is the default but for ``max_effective_steps`` (low, so a short task crosses it) and
two pinned peers, so that a secure cohort of three passes the peer checks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))  # the agent tests' rig, reused as it is

from agent_support import hub_with_agent
from privacy_support import (
    MAX_EFFECTIVE_STEPS,
    SELECTION,
    Attacker,
    PodTraffic,
    PrivacyRig,
    TableSecrets,
    adult_slice,
)

from pod_agent.agent.hubclient import HubClient
from pod_agent.config.settings import HubSection, ModellerPolicy, PrivacyFloorOverride
from pod_agent.modeller import ModellerClient
from pod_agent.protocol import IdentityKey
from pod_agent.protocol.hub_api import PodRegistration

SANDBOX_USER = "pod-sandbox"
ENSURE_USER = Path(__file__).parents[1] / "sandbox" / "ensure_sandbox_user.py"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory, adult_parquet: Path) -> AsyncIterator[PrivacyRig]:
    subprocess.run([sys.executable, str(ENSURE_USER), SANDBOX_USER], check=True)
    tmp = tmp_path_factory.mktemp("privacy")
    csv_text = adult_slice(adult_parquet, tmp / "table.csv")
    secrets = TableSecrets.of(tmp / "table.csv", SELECTION, tmp_path_factory.mktemp("prepared"))
    lifted_key, general_key = IdentityKey.generate(), IdentityKey.generate()
    peer_keys = {name: IdentityKey.generate() for name in ("pod-b", "pod-c")}
    traffic = PodTraffic()
    extra = [
        ModellerPolicy(name="lifted", public_key=lifted_key.public.to_b64(), role="super",
                       kinds=["train", "evaluate", "predict"], allow_predict=True,
                       privacy=PrivacyFloorOverride(require_secure_aggregation=False)),
        ModellerPolicy(name="general", public_key=general_key.public.to_b64(), role="general"),
    ]
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(hub_with_agent(
            tmp, csv_text, security={"sandbox": "strict", "sandbox_user": SANDBOX_USER},
            privacy={"max_effective_steps": MAX_EFFECTIVE_STEPS,
                     "peers": [{"name": n, "public_key": k.public.to_b64()} for n, k in peer_keys.items()]},
            sandbox_limits={"warm_worker": True}, training={"max_concurrent_tasks": 2},
            extra_modellers=extra, middlewares=[traffic.middleware()],
        ))
        for name, key in peer_keys.items():
            # Registered with the hub so that a secure task may name them; nothing runs behind them.
            async with HubClient(HubSection(url=hub.hub_url), key) as peer:
                await peer.register(PodRegistration(
                    name=name, public_key=key.public.to_b64(), schema_public=hub.pod.schema,
                    schema_hash=hub.pod.schema_hash, row_count=hub.pod.row_count, sandbox_level="strict",
                    heartbeat_s=1.0,
                ))
        clients = {}
        for name, key in (("lifted", lifted_key), ("general", general_key)):
            clients[name] = await stack.enter_async_context(ModellerClient(hub.hub_url, key))
            await clients[name].register(name)
        yield PrivacyRig(
            hub=hub, traffic=traffic, secrets=secrets,
            owner=Attacker(hub.modeller, hub.pod, tmp_path_factory.mktemp("owner")),
            lifted=Attacker(clients["lifted"], hub.pod, tmp_path_factory.mktemp("lifted")),
            general=Attacker(clients["general"], hub.pod, tmp_path_factory.mktemp("general")),
            peers=[(name, key.key_id) for name, key in peer_keys.items()], peer_keys=peer_keys,
        )
