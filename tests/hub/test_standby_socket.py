"""A pod's standby task socket (``/v1/pod/ws?standby=1``): held open at a hub process, its heartbeats answered
and nothing pushed on it but a large cohort's task from a process that holds a socket of every pod of the
cohort, until the pod promotes it; then served as a socket opened now, its pending tasks first. Promotion needs
no new signature, so the hub checks the pod's key is still its registered one; the query is inside the signed
path, so a socket signed as a task socket cannot be opened as a standby or back. A pod whose standby ended sends
``sync`` on its task socket, and the hub sends again what is pending for it (at most once per SYNC_EVERY_S)."""

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
from pod_agent.hub.server import SYNC_EVERY_S
from pod_agent.hub.storage import HubTaskRecord, PendingKey, Storage
from pod_agent.protocol import IdentityKey, TaskPayload, envelope_bytes, sign_envelope, sign_request

STANDBY = "/v1/pod/ws?standby=1"


async def _open(
    hub: Any, key: IdentityKey, path: str, *, base: str | None = None, session: aiohttp.ClientSession | None = None,
) -> aiohttp.ClientWebSocketResponse:
    headers = sign_request(key, "GET", path, b"", now=int(time.time()))
    return await (session or hub.session).ws_connect((base or hub.base) + path, headers=headers)


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


async def _acked(storage: Storage, task_id: str, pods: set[str]) -> bool:
    """Whether every one of ``pods`` has acknowledged ``task_id`` (acks are written in the background)."""
    for _ in range(100):
        if pods <= {d.pod for d in storage.deliveries(task_id) if d.acked_at is not None}:
            return True
        await asyncio.sleep(0.05)
    return False


# Several hub processes share a PostgreSQL database: this test has no SQLite variant.
@pytest.mark.parametrize("backend_db", ["postgresql"], indirect=True)
async def test_a_process_with_a_socket_of_every_pod_pushes_a_large_cohorts_task_alone_standbys_included(
    hub: Any,
) -> None:
    """Half the pods' task sockets are at the submitting process and their standbys at the other, half the
    reverse: each pod gets the task once, from the submitting process (on its standby for the second half), and
    its ack there counts. The other process pushes nothing, so its end loses nobody the task: the pods whose
    task socket it held promote their standby, on which the task was acknowledged, and get nothing again."""
    modeller, pods = await federation(hub, ANNOUNCE_FROM_PODS)
    storage, cluster = open_storage(hub.db)
    # Two sockets a pod: more than a session's default limit of connections (100).
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        async with listening(create_app(storage, blob_dir=hub.blob_dir, cluster=cluster), port=0) as other:
            here: dict[str, aiohttp.ClientWebSocketResponse] = {}  # each pod's socket at the submitting process
            there: dict[str, aiohttp.ClientWebSocketResponse] = {}
            for i, (name, key) in enumerate(pods.items()):
                home_here = i % 2 == 0
                here[name] = await _open(hub, key, "/v1/pod/ws" if home_here else STANDBY, session=session)
                there[name] = await _open(
                    hub, key, STANDBY if home_here else "/v1/pod/ws", base=other, session=session
                )
            await asyncio.sleep(0.5)  # the other process LISTENing, and every socket's pending tasks (none) read
            task, raw = keyed_submission(modeller, pods)
            assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
            for name, ws in here.items():
                delivery = json.loads((await ws.receive(timeout=5)).data)
                assert delivery["task_id"] == task.task_id
                checked_delivery(delivery, name)
                await ws.send_str(json.dumps({"type": "ack", "task_id": task.task_id}))
            assert await _acked(hub.storage, task.task_id, set(pods))
            await asyncio.gather(*(_nothing_more(ws) for ws in there.values()))
            # Read as the process closes them, so that each close is answered and the process's shutdown ends.
            ends = [asyncio.create_task(ws.receive(timeout=30)) for ws in there.values()]
        # The other process is gone: its task sockets closed, and their pods promote their standby here.
        assert {end.result().type for end in ends} <= {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED}
        for name in [name for i, name in enumerate(pods) if i % 2]:
            await here[name].send_str('{"type":"promote"}')
        await asyncio.gather(*(_nothing_more(ws) for ws in here.values()))
    finally:
        await session.close()
        storage.close()


def _stored_unannounced(hub: Any, modeller: IdentityKey, pods: dict[str, IdentityKey]) -> str:
    """A task for ``pods`` written straight into storage, as a process that died before pushing it left it."""
    task, _ = keyed_submission(modeller, pods)
    record = HubTaskRecord(
        task_id=task.task_id, modeller_id=modeller.key_id, envelope=envelope_bytes(sign_envelope(task, modeller)),
        pods=sorted(pods), created_at=int(time.time()),
    )
    hub.storage.add_task(record)
    assert TaskPayload.model_validate(task.model_dump()).task_id == record.task_id
    return task.task_id


async def test_a_sync_on_a_task_socket_sends_what_is_pending_once_at_most_every_sync_interval(hub: Any) -> None:
    modeller, pods = await federation(hub, 2)
    ws = await _open(hub, pods["pod-00"], "/v1/pod/ws")
    await asyncio.sleep(0.2)  # its pending tasks (none) read
    first = _stored_unannounced(hub, modeller, pods)
    await _nothing_more(ws)  # nobody woke its push loop
    await ws.send_str('{"type":"sync"}')
    delivery = json.loads((await ws.receive(timeout=5)).data)
    assert delivery["task_id"] == first
    checked_delivery(delivery, "pod-00")

    second = _stored_unannounced(hub, modeller, pods)
    for _ in range(50):  # a pod that syncs without end has storage read once per interval, not once per frame
        await ws.send_str('{"type":"sync"}')
    await _nothing_more(ws)  # within the interval of the first: ignored
    await asyncio.sleep(SYNC_EVERY_S)
    await ws.send_str('{"type":"sync"}')
    assert json.loads((await ws.receive(timeout=5)).data)["task_id"] == second
    await _nothing_more(ws)  # each sent once on this connection, however often the pod asks
    await ws.close()


async def test_pods_that_ask_together_for_a_task_this_process_never_prepared_have_its_record_read_once(
    hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the process that pushed a task alone died and its federation's pods promote or sync here at once:
    the record lists the whole cohort (10,000 names at 10,000 pods), so it is read once, not once per pod."""
    modeller, pods = await federation(hub, 8)
    sockets = [await _open(hub, key, "/v1/pod/ws") for key in pods.values()]
    await asyncio.sleep(0.2)  # their pending tasks (none) read
    task_id = _stored_unannounced(hub, modeller, pods)
    reads: list[str] = []
    get_task = hub.storage.get_task

    def counted(asked: str) -> HubTaskRecord | None:
        reads.append(asked)
        return get_task(asked)

    monkeypatch.setattr(hub.storage, "get_task", counted)
    await asyncio.gather(*(ws.send_str('{"type":"sync"}') for ws in sockets))
    for name, ws in zip(pods, sockets, strict=True):
        delivery = json.loads((await ws.receive(timeout=5)).data)
        assert delivery["task_id"] == task_id
        checked_delivery(delivery, name)
        await ws.close()
    assert reads == [task_id]


async def test_a_sync_on_a_standby_socket_pushes_nothing(hub: Any) -> None:
    modeller, pods = await federation(hub, 2)
    ws = await _open(hub, pods["pod-00"], STANDBY)
    _stored_unannounced(hub, modeller, pods)
    await ws.send_str('{"type":"sync"}')
    await _nothing_more(ws)
    await ws.close()
