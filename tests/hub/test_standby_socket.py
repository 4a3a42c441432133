"""A pod's standby task socket (``/v1/pod/ws?standby=1``): held open at a hub process, pushed nothing and its
heartbeats answered, until the pod promotes it; then served as a socket opened now, its pending tasks first.
Promotion needs no new signature, so the hub checks the pod's key is still its registered one; the query is
inside the signed path, so a socket signed as a task socket cannot be opened as a standby or back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from hub_tasks import checked_delivery, federation, keyed_submission

from pod_agent.hub import create_app, listening, open_storage
from pod_agent.hub.fanout import ANNOUNCE_FROM_PODS
from pod_agent.hub.storage import PendingKey, Storage
from pod_agent.protocol import IdentityKey, sign_request

STANDBY = "/v1/pod/ws?standby=1"


async def _open(hub: Any, key: IdentityKey, path: str, *, base: str | None = None) -> aiohttp.ClientWebSocketResponse:
    headers = sign_request(key, "GET", path, b"", now=int(time.time()))
    return await hub.session.ws_connect((base or hub.base) + path, headers=headers)


async def _nothing_more(ws: aiohttp.ClientWebSocketResponse) -> None:
    with pytest.raises(TimeoutError):
        await ws.receive(timeout=0.5)


async def test_a_standby_socket_is_pushed_nothing_until_promoted_then_its_pending_tasks(hub: Any) -> None:
    modeller, pods = await federation(hub, 2)
    ws = await _open(hub, pods["pod-00"], STANDBY)
    task, raw = keyed_submission(modeller, pods)
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    await ws.send_str('{"type":"heartbeat"}')
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "heartbeat_ack"
    await _nothing_more(ws)

    await ws.send_str('{"type":"promote"}')
    delivery = json.loads((await ws.receive(timeout=5)).data)
    assert delivery["task_id"] == task.task_id
    checked_delivery(delivery, "pod-00")
    await ws.send_str(json.dumps({"type": "ack", "task_id": task.task_id}))

    def acked() -> list[bool]:
        return [d.acked_at is not None for d in hub.storage.deliveries(task.task_id) if d.pod == "pod-00"]

    for _ in range(100):  # the ack is written in the background
        if acked() == [True]:
            break
        await asyncio.sleep(0.05)
    assert acked() == [True]
    await _nothing_more(ws)  # sent once: the promotion's read and the push loop do not both send it
    await ws.close()


def _released(storage: Storage, key: IdentityKey) -> None:
    assert storage.release_pod("pod-00")


def _held_for_approval(storage: Storage, key: IdentityKey) -> None:
    storage.add_pending_key(PendingKey(key.key_id, "pod", "pod-00", requested_at=int(time.time())))


@pytest.mark.parametrize("since", [_released, _held_for_approval], ids=["released", "held-for-approval"])
async def test_a_standby_whose_key_lost_its_standing_since_it_opened_is_closed_at_promotion_with_nothing_pushed(
    hub: Any, since: Callable[[Storage, IdentityKey], None]
) -> None:
    """As ``_authenticate`` refuses such a key at every request but registration."""
    modeller, pods = await federation(hub, 2)
    ws = await _open(hub, pods["pod-00"], STANDBY)
    _, raw = keyed_submission(modeller, pods)
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    since(hub.storage, pods["pod-00"])
    await ws.send_str('{"type":"promote"}')
    closing = await ws.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert "no longer the pod's registered key" in closing.extra


async def test_a_promote_on_a_task_socket_changes_nothing(hub: Any) -> None:
    modeller, pods = await federation(hub, 2)
    ws = await _open(hub, pods["pod-00"], "/v1/pod/ws")
    await asyncio.sleep(0.2)  # its pending tasks (none) read
    await ws.send_str('{"type":"promote"}')
    task, raw = keyed_submission(modeller, pods)
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    assert json.loads((await ws.receive(timeout=5)).data)["task_id"] == task.task_id
    await _nothing_more(ws)
    await ws.close()


async def test_the_standby_query_is_signed_with_the_path(hub: Any) -> None:
    """Headers signed for the task socket do not open a standby (nor the reverse): the signature covers the
    path with its query."""
    _, pods = await federation(hub, 1)
    for signed, opened in (("/v1/pod/ws", STANDBY), (STANDBY, "/v1/pod/ws")):
        headers = sign_request(pods["pod-00"], "GET", signed, b"", now=int(time.time()))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await hub.session.ws_connect(hub.base + opened, headers=headers)
        assert refused.value.status == 401


# Several hub processes share a PostgreSQL database: this test has no SQLite variant.
@pytest.mark.parametrize("backend_db", ["postgresql"], indirect=True)
async def test_a_pod_whose_process_is_gone_gets_a_large_cohorts_task_on_its_promoted_standby(hub: Any) -> None:
    """Two processes: the pod's task socket at the submitting one, its standby at the other. The large cohort's
    task goes out on the task socket only; once that process's socket is gone and the standby promoted, the
    other process delivers whatever the pod has not acknowledged (here: that task again) and the next task."""
    modeller, pods = await federation(hub, ANNOUNCE_FROM_PODS)
    storage, cluster = open_storage(hub.db)
    try:
        async with listening(create_app(storage, blob_dir=hub.blob_dir, cluster=cluster), port=0) as other:
            primary = await _open(hub, pods["pod-03"], "/v1/pod/ws")
            standby = await _open(hub, pods["pod-03"], STANDBY, base=other)
            await asyncio.sleep(0.5)  # the other process LISTENing
            first, raw = keyed_submission(modeller, pods)
            assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
            assert json.loads((await primary.receive(timeout=5)).data)["task_id"] == first.task_id
            await _nothing_more(standby)
            await primary.close()

            await standby.send_str('{"type":"promote"}')
            assert json.loads((await standby.receive(timeout=5)).data)["task_id"] == first.task_id
            _, raw = keyed_submission(modeller, pods)
            assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
            checked_delivery(json.loads((await standby.receive(timeout=5)).data), "pod-03")
            await standby.close()
    finally:
        storage.close()
