"""A fake hub on loopback that answers a pod like the real one, until told to misbehave once.

It runs on its own event loop in a thread, so that a test can drive a real ``pod-agent run``
subprocess (whose memory is then its own, measurable in /proc) with plain blocking calls.
Honest routes: registration, the task WebSocket (pushes pending tasks, acknowledges heartbeats),
the long poll, ack, refusal, progress, results and blob upload; it records what the pod sent.
``provoke(case)`` arms one misbehaviour (``CASES``), served once on its route; a blob case serves
the blob pinned by the next train task. Big replies are streamed from a generator, never built
whole: the fake hub's memory says nothing about the agent's anyway, but a 400 MiB string would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from pod_agent.protocol import CohortEntry, PublicKey, cohort_tree, parse_envelope
from pod_agent.protocol.hub_api import PodRegistration
from pod_agent.protocol.messages import ResultPayload

MIB = 1024 * 1024
# Deeper than any JSON parser's recursion limit, and only 200 KB on the wire.
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
NOT_UTF8 = b'{"pod": "\xff\xfe\xfd"}'
# Just under the pod's byte cap, but 2.7 million tiny values: parsed, some 300 MiB.
MANY_VALUES = b'{"type": "task", "tasks": [' + b"{}," * 2_700_000 + b"{}]}"
# A reply far past the pod's cap (hub_api.MAX_REPLY_BYTES, 8 MiB), streamed a chunk at a time.
GIANT_BYTES = 400 * MIB
# A flood of tasks of this size each (just under the pod's 8 MiB message cap, over its 4 MiB task cap).
FLOOD_TASKS = 48
FLOOD_TASK_CHARS = 8 * MIB - 600  # room for the cohort proof beside it
# The size the corpus's train tasks sign for their pinned weights.
SIGNED_BLOB_BYTES = 64 * 1024
# A drip sends one byte this often, forever (until the pod hangs up).
DRIP_INTERVAL_S = 0.2

# case -> route it is served on: "ws" (a pushed message), "register" / "poll" (the reply), "blob".
CASES: dict[str, str] = {
    "ws-non-utf8": "ws",
    "ws-deep-json": "ws",
    "ws-wrong-shape": "ws",
    "ws-oversized": "ws",
    "ws-many-values": "ws",
    "ws-task-flood": "ws",
    "register-non-utf8": "register",
    "register-wrong-shape": "register",
    "register-giant-json": "register",
    "register-slow-drip": "register",
    "blob-endless": "blob",
    "blob-over-signed-size": "blob",
    "blob-slow-drip": "blob",
    "poll-deep-json": "poll",
    "poll-wrong-shape": "poll",
    "poll-non-utf8": "poll",
    "poll-giant-json": "poll",
    "poll-many-values": "poll",
    "poll-slow-drip": "poll",
}


@dataclass
class HubRecord:
    """What the pod told the hub."""

    registration: PodRegistration | None = None
    registrations: int = 0
    acked: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    results: dict[str, ResultPayload] = field(default_factory=dict)
    ws_handshakes: int = 0
    polls: int = 0


class HostileHub:
    """``with HostileHub() as hub``: ``hub.url``; ``deliver(task_id, envelope)``; ``provoke(case)``."""

    def __init__(self) -> None:
        self.record = HubRecord()
        self.url = ""
        self.websocket_offered = True
        self._pending: dict[str, tuple[str, dict[str, Any]]] = {}  # task id -> (envelope, the pod's cohort proof)
        self._armed: str | None = None
        self._instant_polls_until = 0.0
        self._served: set[str] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-hub", daemon=True)
        self._runner: web.AppRunner | None = None

    # -- control, from the test's thread ------------------------------------------------------

    def __enter__(self) -> HostileHub:
        self._thread.start()
        self.url = self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def deliver(self, task_id: str, envelope: str, proof: dict[str, Any]) -> None:
        self._pending[task_id] = (envelope, proof)

    def provoke(self, case: str) -> None:
        """Arm ``case``: served once on its route. A register case also drops the WebSocket and refuses the
        next ones as a hub that lost the pod's record does (401), so that the pod registers again; a poll case
        stops offering the WebSocket, so that the pod falls back to polling."""
        self._armed = case
        if CASES[case] == "poll":
            self.websocket_offered = False
        if CASES[case] in ("register", "poll"):
            self._call(self._close_sockets())

    def answer_polls_at_once(self, *, for_s: float) -> None:
        """For ``for_s``, answer every long poll at once with no tasks (an honest hub waits for one)."""
        self._instant_polls_until = time.monotonic() + for_s

    def served(self, case: str) -> bool:
        return case in self._served

    def wait_for(self, what: Callable[[], bool], *, timeout_s: float, message: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"{message} within {timeout_s:g} s")
            time.sleep(0.02)

    # -- the server, on its own loop ------------------------------------------------------------

    async def _start(self) -> str:
        app = web.Application(client_max_size=64 * MIB)
        r = app.router
        r.add_post("/v1/pods/register", self._register)
        r.add_get("/v1/pod/ws", self._ws)
        r.add_get("/v1/pod/tasks", self._poll)
        r.add_post("/v1/pod/tasks/{task_id}/ack", self._ack)
        r.add_post("/v1/pod/tasks/{task_id}/refusal", self._refusal)
        r.add_post("/v1/pod/tasks/{task_id}/progress", self._ok)
        r.add_post("/v1/pod/results", self._results)
        r.add_put("/v1/blobs/{sha256}", self._blob_put)
        r.add_get("/v1/blobs/{sha256}", self._blob_get)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        await self._close_sockets()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _close_sockets(self) -> None:
        for ws in list(self._sockets):
            await ws.close()

    def _take(self, route: str) -> str | None:
        """The armed case if it belongs on ``route`` (it is then served, and disarmed)."""
        case = self._armed
        if case is None or CASES[case] != route:
            return None
        self._armed = None
        self._served.add(case)
        return case

    async def _misbehave(self, request: web.Request, case: str) -> web.StreamResponse:
        """The bad reply of a register or poll ``case``."""
        kind = case.split("-", 1)[1]
        if kind == "non-utf8":
            return web.Response(body=NOT_UTF8, content_type="application/json")
        if kind == "deep-json":
            return web.Response(body=DEEP_JSON, content_type="application/json")
        if kind == "many-values":
            return web.Response(body=MANY_VALUES, content_type="application/json")
        if kind == "wrong-shape":
            return web.json_response({"tasks": "none today", "pod": ["not", "a", "name"], "new": "maybe"})
        if kind == "giant-json":
            return await _stream(request, _giant_json())
        if kind == "slow-drip":
            return await _stream(request, _drip(b'{"tasks": [' + b" " * 10_000))
        raise AssertionError(f"no misbehaviour {case!r}")

    async def _register(self, request: web.Request) -> web.StreamResponse:
        case = self._take("register")
        if case is not None:
            return await self._misbehave(request, case)
        registration = PodRegistration.model_validate_json(await request.read())
        self.record.registration = registration
        self.record.registrations += 1
        key_id = PublicKey.from_b64(registration.public_key).key_id
        return web.json_response({"pod": registration.name, "key_id": key_id, "new": False})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self.record.ws_handshakes += 1
        if not self.websocket_offered:
            return web.json_response({"error": "no websockets here"}, status=404)
        if self._armed is not None and CASES[self._armed] == "register":
            return web.json_response({"error": "key is not registered with the hub: register it first"}, status=401)
        ws = web.WebSocketResponse(max_msg_size=16 * MIB)
        await ws.prepare(request)
        self._sockets.add(ws)
        pusher = asyncio.create_task(self._push(ws))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT and '"heartbeat"' in msg.data:
                    await ws.send_json({"type": "heartbeat_ack", "now": int(time.time())})
                elif msg.type is WSMsgType.TEXT and '"ack"' in msg.data:  # as the reference hub takes them
                    self._acked(json.loads(msg.data)["task_id"])
        finally:
            pusher.cancel()
            self._sockets.discard(ws)
        return ws

    async def _push(self, ws: web.WebSocketResponse) -> None:
        sent: set[str] = set()
        while not ws.closed:
            case = self._take("ws")
            if case == "ws-non-utf8":
                await ws.send_frame(NOT_UTF8, WSMsgType.TEXT)
            elif case == "ws-deep-json":
                await ws.send_str(DEEP_JSON.decode())
            elif case == "ws-wrong-shape":
                await ws.send_json({"type": "task", "task_id": 7, "envelope": {"not": "a string"}})
            elif case == "ws-many-values":
                await ws.send_str(MANY_VALUES.decode())
            elif case == "ws-task-flood":
                await _flood(ws)
            elif case == "ws-oversized":
                await ws.send_str('{"type": "task", "envelope": "' + "x" * (9 * MIB) + '"}')
            for task_id, (envelope, proof) in list(self._pending.items()):
                if task_id not in sent:
                    await ws.send_json({"type": "task", "task_id": task_id, "envelope": envelope, "proof": proof})
                    sent.add(task_id)
            await asyncio.sleep(0.02)

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        self.record.polls += 1
        case = self._take("poll")
        if case is not None:
            return await self._misbehave(request, case)
        if time.monotonic() < self._instant_polls_until:
            return web.json_response({"tasks": []})
        deadline = time.monotonic() + min(float(request.query.get("wait", "0")), 5.0)
        while not self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        tasks = [{"type": "task", "task_id": t, "envelope": e, "proof": p} for t, (e, p) in list(self._pending.items())]
        return web.json_response({"tasks": tasks})

    async def _ack(self, request: web.Request) -> web.Response:
        self._acked(request.match_info["task_id"])
        return web.json_response({"ok": True})

    def _acked(self, task_id: str) -> None:
        self.record.acked.add(task_id)
        self._pending.pop(task_id, None)

    async def _refusal(self, request: web.Request) -> web.Response:
        self.record.refused[request.match_info["task_id"]] = (await request.json())["code"]
        return web.json_response({"ok": True})

    async def _ok(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def _results(self, request: web.Request) -> web.Response:
        result = ResultPayload.model_validate(parse_envelope(await request.read()).payload)
        self.record.results[result.task_id] = result
        return web.json_response({"ok": True, "outcome": "stored"}, status=201)

    async def _blob_put(self, request: web.Request) -> web.Response:
        async for _ in request.content.iter_chunked(MIB):
            pass
        return web.json_response({"sha256": request.match_info["sha256"], "outcome": "stored"}, status=201)

    async def _blob_get(self, request: web.Request) -> web.StreamResponse:
        case = self._take("blob")
        if case == "blob-endless":
            return await _stream(request, _endless(b"\0" * MIB))
        if case == "blob-over-signed-size":
            # Twice what the task signs for, honestly labelled with no length: only counting catches it.
            return await _stream(request, _limited(b"\1" * MIB, total=2 * SIGNED_BLOB_BYTES))
        if case == "blob-slow-drip":
            return await _stream(request, _drip(b""))
        return web.json_response({"error": "no such blob"}, status=404)


async def _flood(ws: web.WebSocketResponse) -> None:
    """Tasks just under the pod's message cap, as fast as the socket takes them: each is refused
    (payload_too_large), but only a pod that bounds what it queues keeps its memory."""
    # A well-formed proof, so that each delivery is read and refused for its size, not dropped for its shape.
    proof = cohort_tree([CohortEntry(pod="pod-a", schema_hash="0" * 64, key_id="0" * 64)]).proof("pod-a")
    for _ in range(FLOOD_TASKS):
        envelope = "x" * FLOOD_TASK_CHARS
        await ws.send_str(
            f'{{"type": "task", "task_id": "{uuid.uuid4()}", "envelope": "{envelope}", '
            f'"proof": {proof.model_dump_json()}}}'
        )


async def _stream(request: web.Request, chunks: AsyncIterator[bytes]) -> web.StreamResponse:
    """Send ``chunks`` without a Content-Length until they end or the pod hangs up."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        async for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the pod stopped reading: what this test wants
    return resp


async def _giant_json() -> AsyncIterator[bytes]:
    yield b'{"pod": "'
    chunk = b"a" * MIB
    for _ in range(GIANT_BYTES // MIB):
        yield chunk
    yield b'"}'


async def _endless(chunk: bytes) -> AsyncIterator[bytes]:
    while True:
        yield chunk


async def _limited(chunk: bytes, *, total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = chunk[: total - sent]
        sent += len(piece)
        yield piece


async def _drip(first: bytes) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        await asyncio.sleep(DRIP_INTERVAL_S)
        yield b" "
