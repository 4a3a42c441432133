"""The hub's push of a task to its cohort: each pod gets the signed task once, with its own entry and proof
only, so what a pod receives grows with log2 of the cohort; a hub that lost its prepared copy rebuilds the
cohort from the pods' registrations and delivers only when that gives the signed root."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hub_tasks import SCHEMA_HASH, checked_delivery, federation, keyed_submission

from pod_agent.hub import create_app, listening, open_storage
from pod_agent.hub.fanout import ANNOUNCE_FROM_PODS, PUSH_BATCH, Fanout, Link, prepare
from pod_agent.hub.modeller_routes import SUBMISSION_SLICE, parse_submission
from pod_agent.hub.storage import HubTaskRecord
from pod_agent.protocol import (
    CohortEntry,
    IdentityKey,
    TaskSubmission,
    canonical_json,
    cohort_tree,
    envelope_bytes,
    sign_envelope,
    sign_request,
)


async def test_each_pod_is_pushed_the_task_with_its_own_entry_and_proof(hub: Any) -> None:
    """A cohort this large is announced to the connected pods: their pushes read nothing back from storage."""
    modeller, pods = await federation(hub, ANNOUNCE_FROM_PODS)
    headers = sign_request(pods["pod-00"], "GET", "/v1/pod/ws", b"", now=int(time.time()))
    ws = await hub.session.ws_connect(hub.base + "/v1/pod/ws", headers=headers)
    task, raw = keyed_submission(modeller, pods)
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    pushed = json.loads((await ws.receive(timeout=5)).data)
    await ws.close()
    assert pushed["task_id"] == task.task_id
    assert checked_delivery(pushed, "pod-00").entry.key_id == pods["pod-00"].key_id
    status, polled = await hub.caller(pods["pod-01"]).call("GET", "/v1/pod/tasks?wait=0")
    assert status == 200 and [t["task_id"] for t in polled["tasks"]] == [task.task_id]
    checked_delivery(polled["tasks"][0], "pod-01")
    assert "pod-02" not in json.dumps(pushed) and "pod-02" not in json.dumps(polled)  # no roster travels


# Several hub processes share a PostgreSQL database: this test has no SQLite variant.
@pytest.mark.parametrize("backend_db", ["postgresql"], indirect=True)
async def test_a_large_cohorts_task_reaches_its_pods_connected_to_another_hub_process(hub: Any) -> None:
    """The process that took the task tells the others once; each pushes it once to each pod connected to it
    (within seconds: a push loop left to find it in storage would wait up to 30 s), its cohort rebuilt from
    the pods' registrations."""
    modeller, pods = await federation(hub, ANNOUNCE_FROM_PODS)
    storage, cluster = open_storage(hub.db)
    try:
        async with listening(create_app(storage, blob_dir=hub.blob_dir, cluster=cluster), port=0) as other:
            sockets = {}
            for name in ("pod-07", "pod-08"):
                headers = sign_request(pods[name], "GET", "/v1/pod/ws", b"", now=int(time.time()))
                sockets[name] = await hub.session.ws_connect(other + "/v1/pod/ws", headers=headers)
            await asyncio.sleep(0.5)  # the other process LISTENing, the pods' pending tasks (none) read
            task, raw = keyed_submission(modeller, pods)
            assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
            pushed = {name: json.loads((await ws.receive(timeout=5)).data) for name, ws in sockets.items()}
            for ws in sockets.values():  # once: no second copy from the pod's own push loop
                with pytest.raises(TimeoutError):
                    await ws.receive(timeout=0.5)
                await ws.close()
    finally:
        storage.close()
    for name, delivery in pushed.items():
        assert delivery["task_id"] == task.task_id
        checked_delivery(delivery, name)


async def test_a_small_cohorts_push_also_sends_the_pods_other_pending_deliveries(hub: Any) -> None:
    """Woken by a small cohort's task, a push reads storage: a delivery pending there that no submission here
    announced (another hub process's) goes out with it."""
    modeller, pods = await federation(hub, 2)
    headers = sign_request(pods["pod-00"], "GET", "/v1/pod/ws", b"", now=int(time.time()))
    ws = await hub.session.ws_connect(hub.base + "/v1/pod/ws", headers=headers)
    elsewhere, raw = keyed_submission(modeller, pods)
    record = HubTaskRecord(task_id=elsewhere.task_id, modeller_id=modeller.key_id, pods=tuple(pods),
                           envelope=canonical_json(json.loads(raw)["envelope"]), created_at=int(time.time()))
    hub.storage.add_task(record)
    here, raw = keyed_submission(modeller, pods)
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    pushed = [json.loads((await ws.receive(timeout=5)).data) for _ in range(2)]
    await ws.close()
    assert {d["task_id"] for d in pushed} == {elsewhere.task_id, here.task_id}
    for delivery in pushed:
        checked_delivery(delivery, "pod-00")


async def test_what_a_pod_receives_grows_with_log2_of_the_cohort(hub: Any) -> None:
    modeller, pods = await federation(hub, 32)
    sizes = {}
    for n in (2, 32):
        cohort = dict(list(pods.items())[:n])
        task, raw = keyed_submission(modeller, cohort)
        assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
        _, polled = await hub.caller(pods["pod-00"]).call("GET", "/v1/pod/tasks?wait=0")
        delivery = next(t for t in polled["tasks"] if t["task_id"] == task.task_id)
        sizes[n] = len(json.dumps(delivery))
        assert len(checked_delivery(delivery, "pod-00").path) == (n - 1).bit_length()
    assert sizes[32] - sizes[2] < 4 * 70  # four more hashes on the path; 30 more pods listed would be ~3 kB


async def test_entries_that_do_not_give_the_signed_root_are_refused(hub: Any) -> None:
    modeller, pods = await federation(hub, 3)
    _, raw = keyed_submission(modeller, pods)
    altered = json.loads(raw)
    altered["cohort"][1]["schema_hash"] = "cd" * 32
    status, body = await hub.caller(modeller).call("POST", "/v1/tasks", raw=canonical_json(altered))
    assert status == 400
    assert "the 3 cohort entries do not give the task's signed cohort root" in body["error"]


async def test_a_hub_without_the_prepared_task_rebuilds_its_cohort_from_registrations(hub: Any) -> None:
    """A second hub on the same database (as after a restart) holds no prepared copy of the task."""
    modeller, pods = await federation(hub, 3)
    task, raw = keyed_submission(modeller, pods)
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    async with listening(create_app(hub.storage, blob_dir=hub.blob_dir), port=0) as other:
        restarted = type(hub)(other, hub.storage, hub.blob_dir, hub.session, hub.db)
        _, polled = await restarted.caller(pods["pod-01"]).call("GET", "/v1/pod/tasks?wait=0")
        assert [t["task_id"] for t in polled["tasks"]] == [task.task_id]
        checked_delivery(polled["tasks"][0], "pod-01")
        # pod-02 registers another schema since: the rebuilt cohort no longer gives the signed root.
        again = hub.pod_registration(pods["pod-02"], "pod-02", schema_hash="cd" * 32)
        assert (await restarted.caller(pods["pod-02"]).call("POST", "/v1/pods/register", again))[0] == 200
    async with listening(create_app(hub.storage, blob_dir=hub.blob_dir), port=0) as third:
        fresh = type(hub)(third, hub.storage, hub.blob_dir, hub.session, hub.db)
        assert (await fresh.caller(pods["pod-00"]).call("GET", "/v1/pod/tasks?wait=0"))[1]["tasks"] == []


async def test_a_push_serves_the_event_loop_after_each_push_batch_of_pods_connected_here() -> None:
    """A heartbeat waits at most one batch of sends for its answer; pods not connected here (only woken) do not
    count towards a batch."""
    fanout, links, all_open = Fanout(), [], asyncio.Event()
    here = [f"p{i:03d}a" for i in range(2 * PUSH_BATCH + 1)]
    elsewhere = [f"p{i:03d}b" for i in range(2 * PUSH_BATCH + 1)]  # between those here in the cohort's order

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        links.append(Link(request.query["pod"], ws, request.transport))
        fanout.connect(links[-1])
        if len(links) == len(here):
            all_open.set()
        await ws.receive()  # open until the client closes
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    tree = cohort_tree([CohortEntry(pod=p, schema_hash=SCHEMA_HASH, key_id="0" * 64) for p in here + elsewhere])
    record = HubTaskRecord(task_id="t", modeller_id="m", envelope=b'{"payload": {}}', pods=tree.pods, created_at=1)
    woken: list[str] = []
    seen: list[int] = []  # pods pushed so far, each time another task of the loop ran during the push

    async def watch() -> None:
        while True:
            seen.append(sum("t" in link.sent for link in links))
            await asyncio.sleep(0)

    unlimited = aiohttp.TCPConnector(limit=0)  # a socket each: the default pool holds 100
    async with listening(app, port=0) as base, aiohttp.ClientSession(connector=unlimited) as session:
        clients = [await session.ws_connect(f"{base}/ws?pod={pod}") for pod in here]
        await asyncio.wait_for(all_open.wait(), 5)
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        await fanout.push(prepare(record, tree), tree.pods, wake=woken.append)
        watcher.cancel()
        received = [json.loads((await ws.receive(timeout=5)).data)["task_id"] for ws in clients]
        for ws in clients:
            await ws.close()
    fanout.settle(collect=False)
    assert received == ["t"] * len(here) and woken == elsewhere
    assert sorted(set(seen)) == [0, PUSH_BATCH, 2 * PUSH_BATCH]  # the sends come in batches, nothing else


async def test_a_large_cohorts_submission_is_validated_in_slices_with_the_loop_served_between(hub: Any) -> None:
    """Its entries are validated SUBMISSION_SLICE at a time, as strictly as the whole body at once: a valid one
    reaches the admission check, and a bad entry far down is named as in any body."""
    modeller, _ = await federation(hub, 0)
    n = 2 * SUBMISSION_SLICE + 1
    cohort = {f"pod-{i:05d}": IdentityKey.generate() for i in range(n)}
    _, raw = keyed_submission(modeller, cohort)
    turns = [0]

    async def watch() -> None:
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    parsed = await parse_submission(raw)
    watcher.cancel()
    assert turns[0] >= 3 and parsed == TaskSubmission.model_validate_json(raw)
    status, body = await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    assert status == 404 and "unknown pods ['pod-00000'" in body["error"]
    altered = json.loads(raw)
    altered["cohort"][n - 2]["key_id"] = "not hex"
    status, body = await hub.caller(modeller).call("POST", "/v1/tasks", raw=canonical_json(altered))
    assert status == 400
    assert body["error"] == f"bad request body: cohort.{n - 2}.key_id: String should match pattern '^[0-9a-f]{{64}}$'"


async def test_a_push_holds_the_cyclic_collector_off_until_its_fan_out_settles_and_leaves_it_as_it_found_it() -> None:
    """A full collection at 10,000 connected pods stops the loop 0.3-0.5 s, and a young one among the pods'
    acknowledgements tens of ms: none runs from the push until the fan-out settles, TRIM_AFTER_S after the last."""
    entries = [CohortEntry(pod=p, schema_hash=SCHEMA_HASH, key_id="0" * 64) for p in ("a", "b")]
    tree = cohort_tree(entries)
    record = HubTaskRecord(task_id="t", modeller_id="m", envelope=b'{"payload": {}}', pods=tree.pods, created_at=1)
    prepared = prepare(record, tree)
    during: list[bool] = []
    first, second = Fanout(), Fanout()
    await first.push(prepared, tree.pods, wake=lambda pod: during.append(gc.isenabled()))  # no pod connected
    await second.push(prepared, tree.pods, wake=lambda pod: None)
    assert during == [False, False] and not gc.isenabled()
    first.settle()
    assert not gc.isenabled()  # the other fan-out has not settled yet
    second.settle()
    assert gc.isenabled()
    gc.disable()  # turned off by someone else: still off after the push and its settling
    try:
        await first.push(prepared, tree.pods, wake=lambda pod: None)
        first.settle()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_fan_out_whose_event_loop_has_closed_still_gives_the_collector_back() -> None:
    """The settle timer is a thread's: a hold ends on time even where no loop runs to end it."""
    tree = cohort_tree([CohortEntry(pod="a", schema_hash=SCHEMA_HASH, key_id="0" * 64)])
    record = HubTaskRecord(task_id="t", modeller_id="m", envelope=b'{"payload": {}}', pods=tree.pods, created_at=1)
    asyncio.run(Fanout(settle_after_s=0.2).push(prepare(record, tree), tree.pods, wake=lambda pod: None))
    assert not gc.isenabled()
    deadline = time.monotonic() + 5
    while not gc.isenabled() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gc.isenabled()


async def test_pods_that_connect_together_for_a_task_this_process_never_prepared_have_its_record_read_once(
    hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when a process dies before telling the others of a task it stored, and its pods move here at once: the
    record lists the whole cohort (10,000 names at 10,000 pods), so it is read once, not once per pod."""
    modeller, pods = await federation(hub, 8)
    task, _ = keyed_submission(modeller, pods)
    hub.storage.add_task(HubTaskRecord(
        task_id=task.task_id, modeller_id=modeller.key_id, envelope=envelope_bytes(sign_envelope(task, modeller)),
        pods=tuple(sorted(pods)), created_at=int(time.time()),
    ))
    reads: list[str] = []
    get_task = hub.storage.get_task

    def counted(task_id: str) -> HubTaskRecord | None:
        reads.append(task_id)
        return get_task(task_id)

    monkeypatch.setattr(hub.storage, "get_task", counted)

    async def connect(key: IdentityKey) -> aiohttp.ClientWebSocketResponse:
        headers = sign_request(key, "GET", "/v1/pod/ws", b"", now=int(time.time()))
        return await hub.session.ws_connect(hub.base + "/v1/pod/ws", headers=headers)

    sockets = await asyncio.gather(*(connect(key) for key in pods.values()))
    for name, ws in zip(pods, sockets, strict=True):
        delivery = json.loads((await ws.receive(timeout=5)).data)
        assert delivery["task_id"] == task.task_id
        checked_delivery(delivery, name)
        await ws.close()
    assert reads == [task.task_id]
