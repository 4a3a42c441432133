"""A federation on one machine: an embedded hub and one ``pod-agent run`` process per pod.

Owns writing each pod's state dir, identity key and pod.toml, starting the hub in
this event loop and the pods as child processes (their logs under ``root/logs``;
each imports the same pod_agent tree as the demo and the sandboxed workers),
waiting until every pod is registered and online, and stopping it all again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pod_agent.errors import PodAgentError
from pod_agent.hub import SqliteStorage, StatusPage, blob_dir_for, create_app, listening
from pod_agent.modeller import ModellerClient
from pod_agent.protocol import IdentityKey, PublicKey
from pod_agent.sandbox import check_worker_package

# Registration includes a full schema pass over the pod's data; generous for a slow disk.
POD_START_TIMEOUT_S = 120.0
POD_STOP_TIMEOUT_S = 30.0


class FederationError(PodAgentError):
    """The local federation could not be started; the message names the pod and its log."""


@dataclass(frozen=True)
class PodSite:
    """One pod: its name, its data file and the pod.toml lines beyond the defaults."""

    name: str
    data: Path
    force_stypes: dict[str, list[str]] = field(default_factory=dict)
    extra_toml: str = ""  # further pod.toml sections, appended verbatim
    modeller_toml: str = ""  # further keys of the demo modeller's [[security.modellers]] entry


def pod_toml(
    site: PodSite, *, state_dir: Path, hub_url: str, modeller: IdentityKey, sandbox: str,
    peers: Mapping[str, PublicKey],
) -> str:
    """The pod.toml of a demo pod: one super modeller, the other pods pinned as its secure-aggregation
    peers (as their owners would exchange `pod-agent keys show` lines), the given sandbox level, no
    health port."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    stypes = "\n".join(f"{kind} = {json.dumps(cols)}" for kind, cols in sorted(site.force_stypes.items()))
    pins = "".join(
        f"\n[[privacy.peers]]\nname = {q(name)}\npublic_key = {q(key.to_b64())}\n"
        for name, key in sorted(peers.items()) if name != site.name
    )
    return f"""# Written by `pod-agent demo`.
[pod]
name = {q(site.name)}
state_dir = {q(str(state_dir))}

[hub]
url = {q(hub_url)}
heartbeat_s = 2.0
backoff_initial_s = 0.2
backoff_cap_s = 5.0

[datasource]
path = {q(str(site.data))}
description = "UCI Adult census income, one non-IID share"

[datasource.force_stypes]
{stypes}

[security]
sandbox = {q(sandbox)}

[[security.modellers]]
name = "demo-modeller"
public_key = {q(modeller.public.to_b64())}
role = "super"
kinds = ["train", "evaluate"]
{site.modeller_toml}
[ops]
health_port = 0
{pins}{site.extra_toml}"""


def pod_argv(config: Path) -> list[str]:
    """The command that starts one pod: ``-I`` (no cwd, PYTHONPATH or user site on sys.path), as its
    sandboxed workers start, so a pod imports the pod_agent its workers import, never another tree in
    the directory the demo was started from."""
    return [sys.executable, "-I", "-m", "pod_agent", "run", "--config", str(config)]


class LocalFederation:
    """``async with LocalFederation(...) as fed:`` gives a running hub URL and online pods (``status``: the
    hub's operator page at /status)."""

    def __init__(
        self, root: Path, sites: list[PodSite], *, modeller: IdentityKey, sandbox: str, status: StatusPage | None = None
    ) -> None:
        self.root, self.sites, self.modeller, self.sandbox, self.status = root, sites, modeller, sandbox, status
        self.hub_url = ""
        # What the embedded hub holds (its storage, then its listening site), closed in reverse once the pods stop.
        self._hub = contextlib.AsyncExitStack()
        self._pods: dict[str, asyncio.subprocess.Process] = {}
        # The pods' identity keys as this host wrote them: the modeller pins these rather than
        # trusting the hub's registry, as a real modeller would with keys the pod owners sent.
        self.pod_keys: dict[str, PublicKey] = {}

    async def __aenter__(self) -> LocalFederation:
        try:
            # The demo's own tree must be the one its pods and their workers import (-I): say so up front
            # rather than through three pods failing every task.
            await asyncio.to_thread(check_worker_package)
            await self._start_hub()
            for site in self.sites:
                self.pod_keys[site.name] = await asyncio.to_thread(self._identity, site)
            for site in self.sites:
                await self._start_pod(site)
            await self._wait_online()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    async def _start_hub(self) -> None:
        db = str(self.root / "hub.sqlite")
        storage = SqliteStorage(db)
        self._hub.callback(storage.close)
        app = create_app(storage, blob_dir=blob_dir_for(db), status=self.status)
        self.hub_url = await self._hub.enter_async_context(listening(app, port=0))
        async with ModellerClient(self.hub_url, self.modeller) as client:
            await client.register("demo-modeller")

    def _state_dir(self, site: PodSite) -> Path:
        return self.root / "pods" / site.name

    def _identity(self, site: PodSite) -> PublicKey:
        """The pod's identity key, made on first use; every pod pins every other's before any starts."""
        state_dir = self._state_dir(site)
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)
        key_path = state_dir / "identity.pem"
        if not key_path.exists():
            IdentityKey.generate().save(key_path)
        return IdentityKey.load(key_path).public

    async def _start_pod(self, site: PodSite) -> None:
        state_dir = self._state_dir(site)
        config = state_dir / "pod.toml"
        config.write_text(
            pod_toml(
                site, state_dir=state_dir, hub_url=self.hub_url, modeller=self.modeller, sandbox=self.sandbox,
                peers=self.pod_keys,
            ),
            encoding="utf-8",
        )
        log = self.log_path(site.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POD_AGENT_")}
        with log.open("ab") as sink:
            self._pods[site.name] = await asyncio.create_subprocess_exec(
                *pod_argv(config), stdout=sink, stderr=sink, stdin=asyncio.subprocess.DEVNULL, env=env,
            )

    async def _wait_online(self) -> None:
        deadline = asyncio.get_running_loop().time() + POD_START_TIMEOUT_S
        async with ModellerClient(self.hub_url, self.modeller) as client:
            while True:
                for name, proc in self._pods.items():
                    if proc.returncode is not None:
                        raise FederationError(
                            f"pod {name} exited with code {proc.returncode} while starting; see {self.log_path(name)}"
                        )
                online = {p.name for p in await client.pods() if p.online}
                if online >= set(self._pods):
                    return
                if asyncio.get_running_loop().time() > deadline:
                    waiting = sorted(set(self._pods) - online)
                    raise FederationError(
                        f"pods {waiting} did not come online within {POD_START_TIMEOUT_S:g} s; "
                        f"see their logs in {self.root / 'logs'}"
                    )
                await asyncio.sleep(0.5)

    async def aclose(self) -> None:
        """SIGTERM every pod (graceful stop), kill what outlives the timeout, then stop the hub."""
        for proc in self._pods.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._pods.values():
            try:
                await asyncio.wait_for(proc.wait(), POD_STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._pods.clear()
        await self._hub.aclose()
