"""Hub API over real loopback HTTP: authentication, replay, registration, tasks, results."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import aiohttp
from hub_tasks import submission, task_submission

from pod_agent.hub import create_app, listening, open_storage
from pod_agent.protocol import IdentityKey, canonical_json, envelope_bytes, sign_envelope, sign_request
from pod_agent.protocol.messages import ResultPayload
from pod_agent.protocol.rotation import rotation_statement


async def _setup(hub: Any) -> tuple[IdentityKey, IdentityKey]:
    modeller, pod = IdentityKey.generate(), IdentityKey.generate()
    assert (
        await hub.caller(modeller).call(
            "POST", "/v1/modellers/register", {"name": "m", "public_key": modeller.public.to_b64()}
        )
    )[0] == 200
    assert (await hub.caller(pod).call("POST", "/v1/pods/register", hub.pod_registration(pod, "pod-a")))[0] == 200
    return modeller, pod


def _task(modeller: IdentityKey, pods: list[str]) -> bytes:
    return task_submission(modeller, pods)


def _result(pod: IdentityKey, task_id: str, *, rows: int = 10) -> bytes:
    payload = ResultPayload(
        task_id=task_id, pod="pod-a", kind="schema-stats", status="done", n_rows=rows, produced_at=1
    )
    return envelope_bytes(sign_envelope(payload, pod))


async def test_unsigned_request_is_rejected_with_401(hub: Any) -> None:
    async with hub.session.get(hub.base + "/v1/pods") as resp:
        assert resp.status == 401
        assert "X-Pod-Key-Id" in (await resp.json())["error"]


async def test_unknown_key_is_rejected(hub: Any) -> None:
    status, body = await hub.caller(IdentityKey.generate()).call("GET", "/v1/pods")
    assert status == 401
    assert "not registered" in body["error"]


async def test_replayed_request_is_rejected(hub: Any) -> None:
    modeller, _ = await _setup(hub)
    headers = sign_request(modeller, "GET", "/v1/pods", b"", now=int(time.time()))
    async with hub.session.get(hub.base + "/v1/pods", headers=headers) as first:
        assert first.status == 200
    async with hub.session.get(hub.base + "/v1/pods", headers=headers) as again:
        assert again.status == 401
        assert "already used" in (await again.json())["error"]


async def test_a_request_replayed_to_a_restarted_hub_is_refused(hub: Any) -> None:
    """A hub process's replay cache starts empty; the nonce claimed in the database outlives it, on both backends,
    in the same second as in any other."""
    modeller, _ = await _setup(hub)
    headers = sign_request(modeller, "GET", "/v1/pods", b"", now=int(time.time()))
    async with hub.session.get(hub.base + "/v1/pods", headers=headers) as first:
        assert first.status == 200
    storage, cluster = open_storage(hub.db)
    try:
        async with listening(create_app(storage, blob_dir=hub.blob_dir, cluster=cluster), port=0) as restarted:
            async with hub.session.get(restarted + "/v1/pods", headers=headers) as again:
                assert again.status == 401
                assert "already used: re-sign the request" in (await again.json())["error"]
            assert (await dataclasses.replace(hub, base=restarted).caller(modeller).call("GET", "/v1/pods"))[0] == 200
    finally:
        storage.close()


async def test_stale_timestamp_is_rejected(hub: Any) -> None:
    modeller, _ = await _setup(hub)
    headers = sign_request(modeller, "GET", "/v1/pods", b"", now=int(time.time()) - 600)
    async with hub.session.get(hub.base + "/v1/pods", headers=headers) as resp:
        assert resp.status == 401
        assert "synchronise the clock" in (await resp.json())["error"]


async def test_tampered_body_is_rejected(hub: Any) -> None:
    modeller = IdentityKey.generate()
    body = canonical_json({"name": "m", "public_key": modeller.public.to_b64()})
    headers = sign_request(modeller, "POST", "/v1/modellers/register", body, now=int(time.time()))
    async with hub.session.post(
        hub.base + "/v1/modellers/register", data=body.replace(b'"m"', b'"x"'), headers=headers
    ) as resp:
        assert resp.status == 401
        assert "body does not match" in (await resp.json())["error"]


async def test_registration_signed_by_another_key_is_refused(hub: Any) -> None:
    pod, other = IdentityKey.generate(), IdentityKey.generate()
    await hub.caller(other).call("POST", "/v1/pods/register", hub.pod_registration(other, "pod-b"))
    status, body = await hub.caller(other).call("POST", "/v1/pods/register", hub.pod_registration(pod, "pod-a"))
    assert status == 403
    assert "signed by the key it registers" in body["error"]


async def test_pod_name_taken_by_another_key_is_a_conflict(hub: Any) -> None:
    await _setup(hub)
    intruder = IdentityKey.generate()
    status, body = await hub.caller(intruder).call("POST", "/v1/pods/register", hub.pod_registration(intruder, "pod-a"))
    assert status == 409
    assert "registered to another key" in body["error"]


async def test_pods_list_shows_schema_and_online_state(hub: Any) -> None:
    modeller, _ = await _setup(hub)
    status, body = await hub.caller(modeller).call("GET", "/v1/pods")
    assert status == 200
    (pod,) = body["pods"]
    assert pod["name"] == "pod-a" and pod["online"] is True and pod["schema_hash"] == "a" * 64


async def test_task_for_unknown_pod_is_404(hub: Any) -> None:
    modeller, _ = await _setup(hub)
    status, body = await hub.caller(modeller).call("POST", "/v1/tasks", raw=_task(modeller, ["pod-zz"]))
    assert status == 404
    assert "pod-zz" in body["error"]


async def test_task_signed_by_a_pod_is_refused(hub: Any) -> None:
    modeller, pod = await _setup(hub)
    status, _ = await hub.caller(pod).call("POST", "/v1/tasks", raw=_task(modeller, ["pod-a"]))
    assert status == 403


async def test_task_signed_by_another_modeller_than_the_sender_is_refused(hub: Any) -> None:
    modeller, _ = await _setup(hub)
    other = IdentityKey.generate()
    await hub.caller(other).call("POST", "/v1/modellers/register", {"name": "o", "public_key": other.public.to_b64()})
    status, body = await hub.caller(modeller).call("POST", "/v1/tasks", raw=_task(other, ["pod-a"]))
    assert status == 403 and "task must be signed by the sender's own key" in body["error"]


async def test_task_submission_is_idempotent_and_conflicts_on_other_content(hub: Any) -> None:
    modeller, _ = await _setup(hub)
    raw = _task(modeller, ["pod-a"])
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    status, body = await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    assert (status, body["outcome"]) == (200, "duplicate")
    other = json.loads(_task(modeller, ["pod-a"]))["envelope"]
    other_payload = json.loads(raw)["envelope"]["payload"]
    forged = sign_envelope_dict(
        modeller, {**json.loads(json.dumps(other["payload"])), "task_id": other_payload["task_id"]}
    )
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=forged))[0] == 409


def sign_envelope_dict(key: IdentityKey, payload: dict[str, Any]) -> bytes:
    from pod_agent.protocol.messages import TaskPayload

    return submission(TaskPayload.model_validate(payload), key, ["pod-a"])


async def test_long_poll_returns_pending_task_until_acked(hub: Any) -> None:
    modeller, pod = await _setup(hub)
    raw = _task(modeller, ["pod-a"])
    task_id = json.loads(raw)["envelope"]["payload"]["task_id"]
    poller = asyncio.create_task(hub.caller(pod).call("GET", "/v1/pod/tasks?wait=5"))
    await asyncio.sleep(0.2)
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    status, body = await asyncio.wait_for(poller, 5)
    assert status == 200 and [t["task_id"] for t in body["tasks"]] == [task_id]
    assert json.loads(body["tasks"][0]["envelope"]) == json.loads(raw)["envelope"]
    assert (await hub.caller(pod).call("GET", "/v1/pod/tasks?wait=0"))[1]["tasks"] != []
    assert (await hub.caller(pod).call("POST", f"/v1/pod/tasks/{task_id}/ack", {}))[0] == 200
    assert (await hub.caller(pod).call("GET", "/v1/pod/tasks?wait=0"))[1]["tasks"] == []


async def _ws(hub: Any, pod: IdentityKey) -> aiohttp.ClientWebSocketResponse:
    headers = sign_request(pod, "GET", "/v1/pod/ws", b"", now=int(time.time()))
    return await hub.session.ws_connect(hub.base + "/v1/pod/ws", headers=headers)


async def test_websocket_pushes_tasks_and_redelivers_unacked_after_reconnect(hub: Any) -> None:
    modeller, pod = await _setup(hub)
    ws = await _ws(hub, pod)
    raw1, raw2 = _task(modeller, ["pod-a"]), _task(modeller, ["pod-a"])
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw1)
    first = json.loads((await ws.receive(timeout=5)).data)
    assert first["type"] == "task" and json.loads(first["envelope"]) == json.loads(raw1)["envelope"]
    await ws.send_str(json.dumps({"type": "ack", "task_id": first["task_id"]}))
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw2)
    second = json.loads((await ws.receive(timeout=5)).data)
    await ws.close()
    ws = await _ws(hub, pod)
    again = json.loads((await ws.receive(timeout=5)).data)
    assert again["task_id"] == second["task_id"] != first["task_id"]
    await ws.send_str(json.dumps({"type": "heartbeat"}))
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "heartbeat_ack"
    await ws.close()


async def _pending_ids(hub: Any, pod: IdentityKey) -> list[str]:
    return [t["task_id"] for t in (await hub.caller(pod).call("GET", "/v1/pod/tasks?wait=0"))[1]["tasks"]]


async def test_an_ack_on_a_pods_socket_counts_only_for_a_task_pushed_on_it(hub: Any) -> None:
    """The socket's handshake was signed by pod-a's key, so its acks are pod-a's word, about what the hub
    pushed on it: an ack naming pod-b's task, or one never delivered, changes nothing and costs no write."""
    modeller, pod_a = await _setup(hub)
    pod_b = IdentityKey.generate()
    assert (await hub.caller(pod_b).call("POST", "/v1/pods/register", hub.pod_registration(pod_b, "pod-b")))[0] == 200
    for_b = json.loads(_task(modeller, ["pod-b"]))
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=canonical_json(for_b)))[0] == 201
    ws = await _ws(hub, pod_a)
    raw = _task(modeller, ["pod-a"])
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    pushed = json.loads((await ws.receive(timeout=5)).data)["task_id"]
    for forged in (for_b["envelope"]["payload"]["task_id"], "never-delivered", None, ["a", "list"]):
        await ws.send_str(json.dumps({"type": "ack", "task_id": forged, "pod": "pod-b"}))
    await ws.send_str(json.dumps({"type": "ack", "task_id": pushed}))
    await ws.send_str(json.dumps({"type": "heartbeat"}))
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "heartbeat_ack"  # the socket stays open
    deadline = time.monotonic() + 5
    while await _pending_ids(hub, pod_a) and time.monotonic() < deadline:  # acks are written in the background
        await asyncio.sleep(0.02)
    assert await _pending_ids(hub, pod_a) == []
    assert await _pending_ids(hub, pod_b) == [for_b["envelope"]["payload"]["task_id"]]
    await ws.close()


async def test_websocket_upgrade_needs_a_signature(hub: Any) -> None:
    try:
        await hub.session.ws_connect(hub.base + "/v1/pod/ws")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 401
    else:
        raise AssertionError("unsigned upgrade accepted")


async def test_a_bodiless_request_signed_over_a_body_is_rejected(hub: Any) -> None:
    # A GET (and a pod's socket handshake) has no body to read: it is still held to the body hash it signed.
    _, pod = await _setup(hub)
    for path in ("/v1/pod/tasks?wait=0", "/v1/pod/ws"):
        headers = sign_request(pod, "GET", path, b"a body never sent", now=int(time.time()))
        async with hub.session.get(hub.base + path, headers=headers) as resp:
            assert resp.status == 401
            assert "body does not match its signed sha256" in (await resp.json())["error"]


async def test_a_pods_key_is_looked_up_at_each_request_after_its_release(hub: Any) -> None:
    # Signers' keys are kept parsed between requests; their standing is not: a released key is refused at once.
    _, old = await _setup(hub)
    assert (await hub.caller(old).call("GET", "/v1/pod/tasks?wait=0"))[0] == 200
    assert hub.storage.release_pod("pod-a")
    status, body = await hub.caller(old).call("GET", "/v1/pod/tasks?wait=0")
    assert status == 401 and f"key {old.key_id[:16]} is not registered" in body["error"]
    new = IdentityKey.generate()
    assert (await hub.caller(new).call("POST", "/v1/pods/register", hub.pod_registration(new, "pod-a")))[0] == 200
    assert (await hub.caller(new).call("GET", "/v1/pod/tasks?wait=0"))[0] == 200
    assert (await hub.caller(old).call("GET", "/v1/pod/tasks?wait=0"))[0] == 401


async def test_result_upload_is_idempotent_by_task_and_rejects_a_different_result(hub: Any) -> None:
    modeller, pod = await _setup(hub)
    raw = _task(modeller, ["pod-a"])
    task_id = json.loads(raw)["envelope"]["payload"]["task_id"]
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    result = _result(pod, task_id)
    assert (await hub.caller(pod).call("POST", "/v1/pod/results", raw=result))[0] == 201
    status, body = await hub.caller(pod).call("POST", "/v1/pod/results", raw=result)
    assert (status, body["outcome"]) == (200, "duplicate")
    status, body = await hub.caller(pod).call("POST", "/v1/pod/results", raw=_result(pod, task_id, rows=11))
    assert status == 409 and "different result" in body["error"]
    status, body = await hub.caller(modeller).call("GET", f"/v1/tasks/{task_id}/results")
    assert len(body["results"]) == 1 and body["results"][0]["payload"]["n_rows"] == 10
    status, body = await hub.caller(modeller).call("GET", f"/v1/tasks/{task_id}")
    assert body["pods"]["pod-a"]["result"] == "done" and body["pods"]["pod-a"]["acked"] is True


async def test_result_signed_by_another_key_is_refused(hub: Any) -> None:
    modeller, pod = await _setup(hub)
    raw = _task(modeller, ["pod-a"])
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    forged = _result(IdentityKey.generate(), json.loads(raw)["envelope"]["payload"]["task_id"])
    status, body = await hub.caller(pod).call("POST", "/v1/pod/results", raw=forged)
    assert status == 403 and "result must be signed by the sender's own key" in body["error"]


async def test_refusal_code_is_recorded_for_the_modeller(hub: Any) -> None:
    modeller, pod = await _setup(hub)
    raw = _task(modeller, ["pod-a"])
    task_id = json.loads(raw)["envelope"]["payload"]["task_id"]
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    assert (await hub.caller(pod).call("POST", f"/v1/pod/tasks/{task_id}/refusal", {"code": "expired"}))[0] == 200
    _status, body = await hub.caller(modeller).call("GET", f"/v1/tasks/{task_id}")
    assert body["pods"]["pod-a"]["refusal"] == "expired"
    assert (await hub.caller(pod).call("GET", "/v1/pod/tasks?wait=0"))[1]["tasks"] == []


async def test_another_modeller_cannot_read_a_task(hub: Any) -> None:
    modeller, _ = await _setup(hub)
    raw = _task(modeller, ["pod-a"])
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    other = IdentityKey.generate()
    await hub.caller(other).call("POST", "/v1/modellers/register", {"name": "o", "public_key": other.public.to_b64()})
    status, _ = await hub.caller(other).call("GET", f"/v1/tasks/{json.loads(raw)['envelope']['payload']['task_id']}")
    assert status == 404


async def test_model_versions_are_immutable_and_pinned_by_sha256(hub: Any) -> None:
    from pod_agent.protocol import source_sha256

    modeller, pod = await _setup(hub)
    source = "class Net: pass\n"
    body = {
        "name": "net",
        "version": "1",
        "style": "module",
        "class_name": "Net",
        "source": source,
        "sha256": source_sha256(source),
    }
    assert (await hub.caller(modeller).call("POST", "/v1/models", body))[0] == 201
    assert (await hub.caller(modeller).call("POST", "/v1/models", body))[1]["outcome"] == "duplicate"
    changed = {**body, "source": source + "# x\n", "sha256": source_sha256(source + "# x\n")}
    assert (await hub.caller(modeller).call("POST", "/v1/models", changed))[0] == 409
    wrong = {**body, "version": "2", "sha256": "0" * 64}
    assert (await hub.caller(modeller).call("POST", "/v1/models", wrong))[0] == 400
    # Private by default: the pod reads it once a task of the publisher targets it.
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=_task(modeller, ["pod-a"])))[0] == 201
    status, got = await hub.caller(pod).call("GET", "/v1/models/net/1")
    assert status == 200 and got["source"] == source


async def test_a_released_pod_name_can_be_registered_by_a_new_key(hub: Any) -> None:
    _, old = await _setup(hub)
    new = IdentityKey.generate()
    assert hub.storage.release_pod("pod-a") and not hub.storage.release_pod("pod-a")
    status, body = await hub.caller(new).call("POST", "/v1/pods/register", hub.pod_registration(new, "pod-a"))
    assert status == 200 and body["key_id"] == new.key_id
    status, body = await hub.caller(old).call("POST", "/v1/pods/register", hub.pod_registration(old, "pod-a"))
    assert status == 409 and "pod-agent hub release-pod" in body["error"]


async def test_a_pod_re_keyed_by_its_rotation_statement_is_listed_with_it_and_once(hub: Any) -> None:
    modeller, old = await _setup(hub)
    new = IdentityKey.generate()
    statement = json.loads(envelope_bytes(rotation_statement(pod="pod-a", old=old, new=new.public, now=1,
                                                             overlap_s=10)))
    for _ in range(2):  # the pod registers again at each start, with the same statement
        status, _ = await hub.caller(new).call(
            "POST", "/v1/pods/register", {**hub.pod_registration(new, "pod-a"), "rotation": statement}
        )
        assert status == 200
    status, body = await hub.caller(modeller).call("GET", "/v1/pods")
    assert status == 200
    assert [(p["key_id"], p["rotations"]) for p in body["pods"]] == [(new.key_id, [statement])]


# -- the modeller's long poll on a task: answers when a pod finishes, only to the task's modeller --


async def _submitted(hub: Any) -> tuple[IdentityKey, IdentityKey, str]:
    modeller, pod = await _setup(hub)
    raw = _task(modeller, ["pod-a"])
    await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw)
    return modeller, pod, json.loads(raw)["envelope"]["payload"]["task_id"]


async def test_wait_answers_as_soon_as_a_result_is_stored(hub: Any) -> None:
    modeller, pod, task_id = await _submitted(hub)
    started = time.monotonic()
    waiting = asyncio.create_task(hub.caller(modeller).call("GET", f"/v1/tasks/{task_id}/wait?after=0&wait=20"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert (await hub.caller(pod).call("POST", "/v1/pod/results", raw=_result(pod, task_id)))[0] == 201
    status, body = await asyncio.wait_for(waiting, 5)
    assert status == 200 and body["finished"] == 1 and body["pods"]["pod-a"]["result"] == "done"
    assert time.monotonic() - started < 5


async def test_wait_answers_at_once_for_a_refusal_already_held(hub: Any) -> None:
    modeller, pod, task_id = await _submitted(hub)
    await hub.caller(pod).call("POST", f"/v1/pod/tasks/{task_id}/refusal", {"code": "expired"})
    status, body = await asyncio.wait_for(
        hub.caller(modeller).call("GET", f"/v1/tasks/{task_id}/wait?after=0&wait=20"), 5
    )
    assert status == 200 and body["finished"] == 1 and body["pods"]["pod-a"]["refusal"] == "expired"


async def test_wait_ends_with_the_status_unchanged_when_nothing_happens(hub: Any) -> None:
    modeller, _, task_id = await _submitted(hub)
    status, body = await hub.caller(modeller).call("GET", f"/v1/tasks/{task_id}/wait?after=0&wait=0.2")
    assert status == 200 and body["finished"] == 0


async def test_wait_is_only_for_the_tasks_modeller_and_takes_numbers(hub: Any) -> None:
    modeller, _, task_id = await _submitted(hub)
    other = IdentityKey.generate()
    await hub.caller(other).call("POST", "/v1/modellers/register", {"name": "o", "public_key": other.public.to_b64()})
    assert (await hub.caller(other).call("GET", f"/v1/tasks/{task_id}/wait?wait=1"))[0] == 404
    status, body = await hub.caller(modeller).call("GET", f"/v1/tasks/{task_id}/wait?wait=nan")
    assert status == 400 and "'after' a count of finished pods" in body["error"]


async def test_signers_looked_up_together_each_get_their_own_standing(make_hub: Any) -> None:
    # Requests arriving together have their keys looked up in one query: each is answered for its own key,
    # as alone (a stranger's or a released pod's request beside admitted ones is still refused, and so on).
    hub = await make_hub(registration="approve")
    modeller, pod, released, pending, stranger = (IdentityKey.generate() for _ in range(5))
    for key, name in [(pod, "pod-a"), (released, "pod-r"), (pending, "pod-p")]:
        assert (await hub.caller(key).call("POST", "/v1/pods/register", hub.pod_registration(key, name)))[0] == 202
    registration = {"name": "m", "public_key": modeller.public.to_b64()}
    assert (await hub.caller(modeller).call("POST", "/v1/modellers/register", registration))[0] == 202
    for key in (modeller, pod, released):
        assert hub.storage.approve_key(key.key_id, now=int(time.time()))
    assert hub.storage.release_pod("pod-r")
    unknown = "is not registered with the hub: register it first"
    expected = [
        (modeller, "/v1/pods", 200, None),
        (pod, "/v1/pod/tasks?wait=0", 200, None),
        (released, "/v1/pod/tasks?wait=0", 401, f"request signature rejected: key {released.key_id[:16]} {unknown}"),
        (pending, "/v1/pod/tasks?wait=0", 403, f"an admin must run `pod-agent hub approve {pending.key_id}`"),
        (stranger, "/v1/pods", 401, f"request signature rejected: key {stranger.key_id[:16]} {unknown}"),
    ] * 8
    answers = await asyncio.gather(*(hub.caller(key).call("GET", path) for key, path, _, _ in expected))
    for (_, _, status, error), (got, body) in zip(expected, answers, strict=True):
        assert got == status
        if error is not None:
            assert error in body["error"]
