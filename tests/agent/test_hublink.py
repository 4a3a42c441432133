"""The pod's hub link against a real loopback hub, as its listener hears it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from pod_agent.agent import HubClient
from pod_agent.agent.hublink import HubLink
from pod_agent.config import HubSection
from pod_agent.hub import SqliteStorage, create_app, listening
from pod_agent.modeller import ModellerClient, build_task
from pod_agent.protocol import CohortEntry, HeartbeatAck, HubPush, IdentityKey, PodRegistration, TaskDelivery

SCHEMA_HASH = "a" * 64
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Heard:
    """A ``LinkListener`` that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.tasks: list[str] = []
        self.changed = asyncio.Event()

    def _note(self, event: str) -> None:
        self.events.append(event)
        self.changed.set()

    def admitted(self) -> None:
        self._note("admitted")

    def connected(self, base: str) -> None:
        self._note(f"connected {base}")

    def down(self, exc: BaseException) -> None:
        self._note(f"down {type(exc).__name__}")

    async def push(self, push: HubPush) -> None:
        if isinstance(push, TaskDelivery):
            self.tasks.append(push.task_id)
            self._note("task")
        elif not isinstance(push, HeartbeatAck):
            raise AssertionError(push)

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()


class _Front:
    """Middleware before the hub: counts registrations, refuses the next task socket with 403 when told, or
    every task socket with 404 (a hub that offers none), and keeps the open sockets' connections to cut."""

    def __init__(self, *, websocket: bool = True) -> None:
        self.websocket = websocket
        self.registrations = 0
        self.refuse_next_socket = False
        self.sockets: list[asyncio.BaseTransport] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/v1/pods/register":
            self.registrations += 1
        if request.path == "/v1/pod/ws":
            if not self.websocket:
                return web.json_response({"error": "no websockets here"}, status=404)
            if self.refuse_next_socket:
                self.refuse_next_socket = False
                return web.json_response({"error": "this hub no longer knows the pod"}, status=403)
            if request.transport is not None:
                self.sockets.append(request.transport)
        return await handler(request)


@dataclass
class _Rig:
    url: str
    heard: _Heard
    front: _Front
    modelling: ModellerClient
    modeller: IdentityKey
    pod: IdentityKey

    async def submit(self) -> str:
        cohort = [CohortEntry(pod="pod-a", schema_hash=SCHEMA_HASH, key_id=self.pod.key_id)]
        task = build_task(modeller_id=self.modeller.key_id, cohort=cohort, kind="schema-stats")
        await self.modelling.submit_task(task, cohort)
        return task.task_id


@asynccontextmanager
async def _linked(tmp_path: Path, front: _Front) -> AsyncIterator[_Rig]:
    """A hub behind ``front`` and a pod's ``HubLink`` to it, running."""
    storage = SqliteStorage(":memory:")
    app = create_app(storage, blob_dir=tmp_path / "blobs")
    app.middlewares.insert(0, front.middleware)
    pod, modeller = IdentityKey.generate(), IdentityKey.generate()
    registration = PodRegistration(name="pod-a", public_key=pod.public.to_b64(), schema_public={},
                                   schema_hash=SCHEMA_HASH, row_count=10, sandbox_level="none", heartbeat_s=5)
    heard = _Heard()
    try:
        async with listening(app, port=0) as url, ModellerClient(url, modeller) as modelling:
            await modelling.register("m")
            section = HubSection(url=url, heartbeat_s=1, backoff_initial_s=0.05, backoff_cap_s=0.2)
            async with HubClient(section, pod) as hub:
                link = asyncio.create_task(HubLink(
                    hub, section, registration=lambda: registration, listener=heard, stop=asyncio.Event(),
                ).run())
                try:
                    yield _Rig(url, heard, front, modelling, modeller, pod)
                finally:
                    link.cancel()
                    await asyncio.gather(link, return_exceptions=True)
    finally:
        storage.close()


async def test_a_link_registers_once_and_again_only_when_the_hub_refuses_its_session(tmp_path: Path) -> None:
    async with _linked(tmp_path, _Front()) as rig:
        await rig.heard.until(2)
        assert rig.heard.events == ["admitted", f"connected {rig.url}"]
        task_id = await rig.submit()
        await rig.heard.until(3)
        assert rig.heard.tasks == [task_id]
        # The socket's connection cut: the link comes back without registering (the hub still knows the pod).
        rig.front.sockets[-1].close()
        await rig.heard.until(5)
        assert rig.heard.events[3:] == ["down HubUnavailable", f"connected {rig.url}"]
        assert rig.front.registrations == 1
        # Cut again, and the hub refuses the next socket as from a pod it no longer knows: registered anew.
        rig.front.refuse_next_socket = True
        rig.front.sockets[-1].close()
        await rig.heard.until(8)
        assert rig.heard.events[5:] == ["down HubUnavailable", "admitted", f"connected {rig.url}"]
        assert rig.front.registrations == 2


async def test_a_link_to_a_hub_without_websockets_long_polls_and_hands_on_its_tasks(tmp_path: Path) -> None:
    async with _linked(tmp_path, _Front(websocket=False)) as rig:
        await rig.heard.until(2)
        task_id = await rig.submit()
        async with asyncio.timeout(10):
            while task_id not in rig.heard.tasks:
                await rig.heard.until(len(rig.heard.events) + 1)
        assert rig.heard.events[:2] == ["admitted", f"connected {rig.url}"]
        assert "task" in rig.heard.events and not any(e.startswith("down") for e in rig.heard.events)
