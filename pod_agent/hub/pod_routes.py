"""Pod routes of the hub: a pod's task socket (push) or long poll, its heartbeats, acknowledgements, refusals,
progress and results.

Tasks reach pods over a WebSocket per pod (push) or a long poll, at least once: a task stays pending until the
pod acknowledges it, and every new connection gets all pending tasks again (``HubState.pending``), each pushed
once per connection (``fanout.Link``). A large cohort's task is pushed straight from the fan-out
(``fanout.Fanout.push``); a pod's own push loop sends what storage holds on connecting, after a wake-up, or what
the fan-out announced to it. A standby socket is held open for a pod whose tasks come on a socket at another
hub process, until the pod promotes it. Results are idempotent by (task, pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import WSMsgType, web

from pod_agent.errors import HubError
from pod_agent.hub.auth import SIGNER, body_of, signer_pod
from pod_agent.hub.blob_routes import require_uploaded
from pod_agent.hub.fanout import Link, PreparedTask
from pod_agent.hub.hubstate import MAX_LONG_POLL_S, HubState, hub_of, task_wakeup_key
from pod_agent.hub.limits import MAX_SMALL_BODY_BYTES
from pod_agent.hub.reading import opened, parse_body
from pod_agent.hub.storage import BlobRefRecord
from pod_agent.protocol import ProgressEvent, PublicKey, Refusal, ResultPayload, envelope_bytes

_log = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.post("/v1/pod/heartbeat", name="pod_heartbeat")
async def _pod_heartbeat(request: web.Request) -> web.Response:
    hub = hub_of(request)
    pod = signer_pod(request)
    await hub.db(hub.storage.touch_pod, pod.name, now=hub.now())
    return web.json_response({"ok": True, "now": hub.now()})


@routes.get("/v1/pod/tasks", name="pod_tasks")
async def _pod_tasks(request: web.Request) -> web.Response:
    """Long poll: answer at once when tasks are pending, else when one arrives or the wait ends."""
    hub = hub_of(request)
    pod = signer_pod(request)
    try:
        wait_s = min(float(request.query.get("wait", "0")), MAX_LONG_POLL_S)
    except ValueError as exc:
        raise HubError("query 'wait' must be a number of seconds", status=400) from exc
    await hub.db(hub.storage.touch_pod, pod.name, now=hub.now())
    event = hub.wakeup(pod.name)
    tasks = await hub.pending(pod.name)
    if not tasks and wait_s > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wait_s)
        tasks = await hub.pending(pod.name)
    body = '{"tasks": [' + ", ".join(t.delivery(pod.name) for t in tasks) + "]}"
    return web.Response(text=body, content_type="application/json")


@routes.get("/v1/pod/ws", name="pod_ws")
async def _pod_ws(request: web.Request) -> web.WebSocketResponse:
    """Push pending tasks; read acks and heartbeats. Every connection starts by resending all pending.

    A standby socket (``?standby=1``, inside the signed path) is one a pod holds open at this process while
    its tasks come on a socket at another: nothing is pushed on it and its heartbeats are answered without
    being recorded, until the pod sends ``promote`` because that other socket ended (its process died). Then
    it is served as a socket opened now, without the signed handshake that thousands of pods moving at once
    would each cost this process (~0.4 ms of CPU apiece)."""
    hub = hub_of(request)
    pod = signer_pod(request)
    # A pod sends heartbeats and acks on its socket, nothing larger. No permessage-deflate: the zlib state
    # each connection allocates on its first push took the hub to 302 MB in a fan-out to 4000 pods (187 MB
    # without), and a signed task of hex hashes compresses little.
    ws = web.WebSocketResponse(max_msg_size=MAX_SMALL_BODY_BYTES, compress=False)
    await ws.prepare(request)
    hub.sockets.add(ws)
    link = Link(pod.name, ws, request.transport, standby=request.query.get("standby") == "1")
    pusher = None if link.standby else _serve_link(hub, link)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            if await _on_pod_message(hub, link, msg.data) and pusher is None:
                if not await _still_registered(hub, request[SIGNER], pod.name):
                    await ws.close(message=b"this key is no longer the pod's registered key: register again")
                    break
                link.standby = False
                pusher = _serve_link(hub, link)
    finally:
        if pusher is not None:
            pusher.cancel()
            # The pod may vanish mid-send; its tasks stay pending and go out again on its next connection.
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pusher
            hub.fanout.disconnect(link)
    return ws


def _serve_link(hub: HubState, link: Link) -> asyncio.Task[None]:
    """``link`` is one of its pod's task sockets from now: pushed to, and its pending tasks sent."""
    hub.fanout.connect(link)
    hub.writes.touch(link.pod, hub.now())  # written with the heartbeats: no thread hop per connecting pod
    return asyncio.create_task(_push_loop(hub, link), name=f"push:{link.pod}")


async def _still_registered(hub: HubState, key_id: str, pod: str) -> bool:
    """Whether ``key_id`` is still ``pod``'s registered key and not held for approval, as ``auth``
    requires of every request (a standby socket may have been opened hours before its promotion, and the pod
    released, its key rotated or held for approval since)."""
    standing = await hub.signers.get(key_id)
    return standing.pod is not None and standing.pod.name == pod and not standing.pending


async def _push_loop(hub: HubState, link: Link) -> None:
    """Send each pending task once per connection: what storage holds on connecting (and after a wake-up
    from another process, or a quiet MAX_LONG_POLL_S), else what a fan-out announced (the socket was busy
    when it pushed), already encoded (``fanout.py``), without reading the task back."""
    announced: list[PreparedTask] | None = None
    while not link.ws.closed:
        event = hub.wakeup(link.pod)
        for task in await hub.pending(link.pod, sent=link.sent) if announced is None else announced:
            await link.send(task)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MAX_LONG_POLL_S):
                await event.wait()
        announced = hub.fanout.take(link.pod)


async def _on_pod_message(hub: HubState, link: Link, data: str) -> bool:
    """A heartbeat is answered at once; its touch, and an ack, are gathered and written in the background
    (``batching.GatheredWrites``), so the pod's next message is read while a fan-out's acks are written.
    The socket's handshake was signed by the pod's key: what comes on it is the pod's word. An ack counts
    only for a task pushed on this connection (any other is no delivery of this pod's, or one the hub
    delivers again), so what a pod sends cannot make the hub write more than its tasks. A standby socket's
    heartbeats are not recorded: the pod's other socket's are. Whether the pod asked to promote the socket."""
    try:
        msg = json.loads(data)
        kind = msg["type"]
    except (ValueError, KeyError, TypeError):
        await link.ws.close(message=b"malformed message")
        return False
    now = hub.now()
    if kind == "heartbeat":
        await link.ws.send_str(f'{{"type": "heartbeat_ack", "now": {now}}}')
        if not link.standby:
            hub.writes.touch(link.pod, now)
    elif kind == "ack" and isinstance(task_id := msg.get("task_id"), str) and task_id in link.sent:
        hub.writes.ack(task_id, link.pod, now)
    return bool(kind == "promote")


def _no_task_for(task_id: str, pod: str) -> HubError:
    return HubError(f"no task {task_id} for pod {pod!r}", status=404)


@routes.post("/v1/pod/tasks/{task_id}/ack", name="pod_task_ack")
async def _pod_task_ack(request: web.Request) -> web.Response:
    hub = hub_of(request)
    pod = signer_pod(request)
    found = await hub.db(hub.storage.ack_delivery, request.match_info["task_id"], pod.name, now=hub.now())
    if not found:
        raise _no_task_for(request.match_info["task_id"], pod.name)
    return web.json_response({"ok": True})


@routes.post("/v1/pod/tasks/{task_id}/refusal", name="pod_task_refusal")
async def _pod_task_refusal(request: web.Request) -> web.Response:
    hub = hub_of(request)
    pod = signer_pod(request)
    refusal: Refusal = parse_body(Refusal, body_of(request))
    task_id = request.match_info["task_id"]
    if not await hub.db(hub.storage.record_refusal, task_id, pod.name, refusal.code, now=hub.now()):
        raise _no_task_for(task_id, pod.name)
    hub.notify(task_wakeup_key(task_id))
    _log.info("task refused by pod", extra={"pod": pod.name, "code": refusal.code})
    return web.json_response({"ok": True})


@routes.post("/v1/pod/tasks/{task_id}/progress", name="pod_task_progress")
async def _pod_task_progress(request: web.Request) -> web.Response:
    hub = hub_of(request)
    pod = signer_pod(request)
    event: ProgressEvent = parse_body(ProgressEvent, body_of(request))
    task_id = request.match_info["task_id"]
    if event.task_id != task_id:
        raise HubError("progress event names another task than the URL", status=400)
    if not await hub.db(hub.storage.record_progress, task_id, pod.name, event.model_dump(mode="json")):
        raise _no_task_for(task_id, pod.name)
    return web.json_response({"ok": True})


@routes.post("/v1/pod/results", name="pod_results")
async def _pod_results(request: web.Request) -> web.Response:
    """Store a signed result once; the same bytes again are acknowledged, different ones are 409."""
    hub = hub_of(request)
    pod = signer_pod(request)
    envelope, result = opened(body_of(request), ResultPayload, PublicKey.from_b64(pod.public_key), what="result")
    if result.pod != pod.name:
        raise HubError(f"result names pod {result.pod!r} but was uploaded by {pod.name!r}", status=403)
    task = await hub.db(hub.storage.get_task, result.task_id)
    if task is None or pod.name not in task.pods:
        raise _no_task_for(result.task_id, pod.name)
    if result.blob is not None:
        await require_uploaded(hub, result.blob.sha256, pod.key_id, size_bytes=result.blob.size_bytes, what="result")
    # Referenced with the result: a collection between the check above and this write leaves neither (424 then,
    # and the pod's outbox sends the blob and the result again).
    refs = [] if result.blob is None else [BlobRefRecord(result.blob.sha256, "result", result.task_id, pod.name)]
    outcome = await hub.db(
        hub.storage.put_result, result.task_id, pod.name, envelope_bytes(envelope),
        status=result.status, now=hub.now(), refs=refs,
    )
    hub.notify(task_wakeup_key(result.task_id))
    _log.info("result %s", outcome, extra={"pod": pod.name, "status": result.status})
    return web.json_response({"ok": True, "outcome": outcome}, status=201 if outcome == "stored" else 200)
