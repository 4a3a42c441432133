"""Blob ownership over real loopback HTTP: who may download what, per-key quotas, and collection of
blobs nothing references after the grace period."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any

from hub_tasks import entries, submission

from pod_agent.hub.limits import HubLimits
from pod_agent.modeller.tasks import build_task
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope, sign_request, source_sha256
from pod_agent.protocol.messages import BlobRef, ResultPayload, WeightsRef


async def _put(hub: Any, key: IdentityKey, data: bytes) -> tuple[int, Any, str]:
    sha = hashlib.sha256(data).hexdigest()
    path = f"/v1/blobs/{sha}"
    headers = sign_request(key, "PUT", path, b"", now=int(time.time()))
    async with hub.session.put(hub.base + path, data=data, headers=headers) as resp:
        return resp.status, await resp.json(), sha


async def _get(hub: Any, key: IdentityKey, sha: str) -> tuple[int, bytes]:
    path = f"/v1/blobs/{sha}"
    headers = sign_request(key, "GET", path, b"", now=int(time.time()))
    async with hub.session.get(hub.base + path, headers=headers) as resp:
        return resp.status, await resp.read()


async def _register(hub: Any) -> dict[str, IdentityKey]:
    keys = {name: IdentityKey.generate() for name in ("modeller", "stranger-m", "pod-a", "pod-b", "stranger-p")}
    for name in ("modeller", "stranger-m"):
        body = {"name": name, "public_key": keys[name].public.to_b64()}
        assert (await hub.caller(keys[name]).call("POST", "/v1/modellers/register", body))[0] == 200
    for name in ("pod-a", "pod-b", "stranger-p"):
        assert (await hub.caller(keys[name]).call("POST", "/v1/pods/register", hub.pod_registration(keys[name], name)))[
            0
        ] == 200
    return keys


async def _task(hub: Any, modeller: IdentityKey, pods: list[str], weights: WeightsRef | None = None) -> str:
    payload = build_task(modeller_id=modeller.key_id, cohort=entries(pods), kind="schema-stats")
    if weights is not None:
        payload = payload.model_copy(update={"weights": weights})
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=submission(payload, modeller, pods)))[
        0
    ] == 201
    return payload.task_id


async def test_weights_reach_the_targeted_pod_and_results_reach_the_task_modeller_only(hub: Any) -> None:
    keys = await _register(hub)
    weights = os.urandom(4096)
    status, _, weights_sha = await _put(hub, keys["modeller"], weights)
    assert status == 201
    task_id = await _task(
        hub, keys["modeller"], ["pod-a"], WeightsRef(blob_id=weights_sha, sha256=weights_sha, size_bytes=4096)
    )

    assert await _get(hub, keys["pod-a"], weights_sha) == (200, weights)
    assert await _get(hub, keys["modeller"], weights_sha) == (200, weights)
    for outsider in ("pod-b", "stranger-p", "stranger-m"):
        status, body = await _get(hub, keys[outsider], weights_sha)
        assert status == 404 and b"readable by this key" in body, outsider

    update = os.urandom(2048)
    status, _, update_sha = await _put(hub, keys["pod-a"], update)
    assert status == 201
    result = ResultPayload(
        task_id=task_id, pod="pod-a", kind="schema-stats", status="done", produced_at=1,
        blob=BlobRef(sha256=update_sha, size_bytes=2048, encoding="safetensors"),
    )
    assert (
        await hub.caller(keys["pod-a"]).call(
            "POST", "/v1/pod/results", raw=envelope_bytes(sign_envelope(result, keys["pod-a"]))
        )
    )[0] == 201
    assert await _get(hub, keys["modeller"], update_sha) == (200, update)
    assert await _get(hub, keys["pod-a"], update_sha) == (200, update)
    for outsider in ("pod-b", "stranger-p", "stranger-m"):
        assert (await _get(hub, keys[outsider], update_sha))[0] == 404, outsider


async def test_knowing_a_sha256_makes_no_one_an_owner(hub: Any) -> None:
    keys = await _register(hub)
    secret = os.urandom(4096)
    _, _, sha = await _put(hub, keys["modeller"], secret)
    # The stranger claims the hash with other bytes: refused, and not an owner.
    path = f"/v1/blobs/{sha}"
    headers = sign_request(keys["stranger-m"], "PUT", path, b"", now=int(time.time()))
    async with hub.session.put(hub.base + path, data=b"junk", headers=headers) as resp:
        assert resp.status == 400
    assert (await _get(hub, keys["stranger-m"], sha))[0] == 404
    # A stranger cannot pin the modeller's weights in a task (which would open them to the stranger's pod), nor
    # name them as a model's weights: refused, so nor does it keep them from collection by referencing them.
    payload = build_task(modeller_id=keys["stranger-m"].key_id, cohort=entries(["stranger-p"]), kind="schema-stats")
    payload = payload.model_copy(update={"weights": WeightsRef(blob_id=sha, sha256=sha, size_bytes=4096)})
    stranger = hub.caller(keys["stranger-m"])
    status, body = await stranger.call("POST", "/v1/tasks", raw=submission(payload, keys["stranger-m"], ["stranger-p"]))
    assert status == 424 and "not uploaded by this key" in body["error"]
    assert (await _get(hub, keys["stranger-p"], sha))[0] == 404
    source = "class Net: pass\n"
    model = {"name": "net", "version": "1", "style": "module", "class_name": "Net", "source": source,
             "sha256": source_sha256(source), "weights_sha256": sha}
    assert (await stranger.call("POST", "/v1/models", model))[0] == 424
    assert hub.storage.unreferenced_blobs(uploaded_before=int(time.time()) + 60) == [sha]
    # Nor does a stranger pod's result naming it open it to the stranger's modeller.
    task_id = await _task(hub, keys["stranger-m"], ["stranger-p"])
    result = ResultPayload(
        task_id=task_id, pod="stranger-p", kind="schema-stats", status="done", produced_at=1,
        blob=BlobRef(sha256=sha, size_bytes=4096, encoding="safetensors"),
    )
    status, body = await hub.caller(keys["stranger-p"]).call(
        "POST", "/v1/pod/results", raw=envelope_bytes(sign_envelope(result, keys["stranger-p"]))
    )
    assert status == 424 and "PUT it first" in body["error"]
    assert (await _get(hub, keys["stranger-m"], sha))[0] == 404
    # Uploading the same bytes in full does make the uploader an owner of its copy.
    assert (await _put(hub, keys["stranger-m"], secret))[0] == 201
    assert (await _get(hub, keys["stranger-m"], sha))[0] == 200


async def test_an_owner_sending_a_blob_again_is_answered_at_once_unless_its_bytes_are_missing(hub: Any) -> None:
    keys = await _register(hub)
    data = os.urandom(1000)
    status, _, sha = await _put(hub, keys["pod-a"], data)
    assert status == 201
    assert await _put(hub, keys["pod-a"], data) == (200, {"sha256": sha, "outcome": "duplicate"}, sha)
    # Its bytes gone (a crash between recording the blob and placing them): the owner's upload places them.
    (hub.blob_dir / sha[:2] / sha).unlink()
    status, body, _ = await _put(hub, keys["pod-a"], data)
    assert (status, body["outcome"]) == (201, "stored") and await _get(hub, keys["pod-a"], sha) == (200, data)


async def test_per_key_quotas_refuse_junk_and_leave_others_room(make_hub: Any) -> None:
    hub = await make_hub(limits=HubLimits(blob_quota_bytes=10_000, blob_quota_count=3))
    keys = await _register(hub)
    assert (await _put(hub, keys["stranger-p"], os.urandom(8_000)))[0] == 201
    status, body, _ = await _put(hub, keys["stranger-p"], os.urandom(4_000))
    assert status == 413 and "--blob-quota-bytes" in body["error"]
    for _ in range(2):
        assert (await _put(hub, keys["stranger-p"], os.urandom(10)))[0] == 201
    status, body, _ = await _put(hub, keys["stranger-p"], os.urandom(10))
    assert status == 413 and "--blob-quota-count" in body["error"]
    assert [p for p in hub.blob_dir.rglob("*.part")] == []
    # Another key's quota is its own.
    assert (await _put(hub, keys["modeller"], os.urandom(9_000)))[0] == 201


async def test_unreferenced_blobs_are_collected_after_the_grace_period(make_hub: Any) -> None:
    hub = await make_hub(limits=HubLimits(blob_grace_s=1, gc_interval_s=0.2))
    keys = await _register(hub)
    _, _, junk = await _put(hub, keys["stranger-p"], os.urandom(1000))
    weights = os.urandom(1000)
    _, _, pinned = await _put(hub, keys["modeller"], weights)
    await _task(hub, keys["modeller"], ["pod-a"], WeightsRef(blob_id=pinned, sha256=pinned, size_bytes=1000))
    junk_file = hub.blob_dir / junk[:2] / junk
    assert junk_file.exists()
    deadline = time.monotonic() + 5
    while junk_file.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not junk_file.exists() and hub.storage.get_blob(junk) is None
    assert hub.storage.blob_usage(keys["stranger-p"].key_id).count == 0
    # The pinned weights stay and are still served to the targeted pod.
    assert await _get(hub, keys["pod-a"], pinned) == (200, weights)


async def test_a_task_or_model_naming_a_collected_blob_is_refused_and_stored_once_the_blob_is_sent_again(
    make_hub: Any,
) -> None:
    """A blob uploaded and not named within the grace period is collected; a task pinning it, or a model version
    naming it as its weights, is then refused (424, stored nothing: no pod is pushed a task whose weights are gone)
    and stored once the blob is sent again."""
    hub = await make_hub(limits=HubLimits(blob_grace_s=1, gc_interval_s=0.2))
    keys = await _register(hub)
    weights = os.urandom(1000)
    _, _, sha = await _put(hub, keys["modeller"], weights)
    deadline = time.monotonic() + 5
    while hub.storage.get_blob(sha) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert hub.storage.get_blob(sha) is None
    payload = build_task(modeller_id=keys["modeller"].key_id, cohort=entries(["pod-a"]), kind="schema-stats")
    payload = payload.model_copy(update={"weights": WeightsRef(blob_id=sha, sha256=sha, size_bytes=1000)})
    modeller = hub.caller(keys["modeller"])
    status, body = await modeller.call("POST", "/v1/tasks", raw=submission(payload, keys["modeller"], ["pod-a"]))
    assert status == 424 and "PUT it" in body["error"]
    assert (await modeller.call("GET", f"/v1/tasks/{payload.task_id}"))[0] == 404
    source = "class Net: pass\n"
    model = {"name": "net", "version": "1", "style": "module", "class_name": "Net", "source": source,
             "sha256": source_sha256(source), "weights_sha256": sha}
    assert (await modeller.call("POST", "/v1/models", model))[0] == 424
    assert hub.storage.get_model("net", "1") is None

    assert (await _put(hub, keys["modeller"], weights))[0] == 201
    assert (await modeller.call("POST", "/v1/tasks", raw=submission(payload, keys["modeller"], ["pod-a"])))[0] == 201
    assert (await modeller.call("POST", "/v1/models", model))[0] == 201
    # Named now, so no longer collected: the pod the task targets reads it after the grace period.
    await asyncio.sleep(1.5)
    assert await _get(hub, keys["pod-a"], sha) == (200, weights)


async def test_an_old_database_gets_owners_and_references_for_its_blobs(tmp_path: Any) -> None:
    import sqlite3

    from pod_agent.hub import SqliteStorage

    db = tmp_path / "old.sqlite"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, created_at INTEGER NOT NULL);"
        "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, modeller_id TEXT NOT NULL, envelope BLOB NOT NULL,"
        " pods TEXT NOT NULL, created_at INTEGER NOT NULL);"
        "CREATE TABLE models (name TEXT NOT NULL, version TEXT NOT NULL, style TEXT NOT NULL, class_name TEXT,"
        " source TEXT NOT NULL, sha256 TEXT NOT NULL, weights_sha256 TEXT, owner TEXT NOT NULL,"
        " created_at INTEGER NOT NULL, PRIMARY KEY (name, version));"
    )
    sha = "b" * 64
    old.execute("INSERT INTO blobs VALUES (?, 10, 1)", (sha,))
    envelope = json.dumps({"payload": {"weights": {"sha256": sha}}}).encode()
    old.execute("INSERT INTO tasks VALUES ('t1', 'm1', ?, '[\"pod-a\"]', 1)", (envelope,))
    old.execute("INSERT INTO models VALUES ('net', '1', 'module', 'Net', 'x', ?, NULL, 'm1', 1)", ("c" * 64,))
    old.commit()
    old.close()
    storage = SqliteStorage(db)
    try:
        assert storage.blob_owned_by(sha, "m1")
        assert storage.unreferenced_blobs(uploaded_before=10**10) == []
        model = storage.get_model("net", "1")
        assert model is not None and model.public  # published before sharing existed: stays readable
    finally:
        storage.close()
