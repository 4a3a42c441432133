"""The hub's relay of secure-round messages over real loopback HTTP: who may post and read what."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import os
import time
from typing import Any

from hub_tasks import entries, task_submission

from pod_agent.protocol import IdentityKey, cohort_tree, envelope_bytes, round_path, sign_envelope, sign_request
from pod_agent.protocol.messages import BlobRef
from pod_agent.protocol.secure_round import (
    MAX_STAGE_BYTES,
    AdvertRoster,
    CommittedList,
    ConsistencySignature,
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    SurvivorList,
)
from pod_agent.secagg import cohort_graph
from pod_agent.secagg.plus import CIPHERTEXT_BYTES

C_KEY = base64.b64encode(b"c" * 32).decode()
S_KEY = base64.b64encode(b"s" * 32).decode()


async def _cohort(hub: Any) -> tuple[IdentityKey, dict[str, IdentityKey], str]:
    modeller = IdentityKey.generate()
    body = {"name": "m", "public_key": modeller.public.to_b64()}
    assert (await hub.caller(modeller).call("POST", "/v1/modellers/register", body))[0] == 200
    pods = {name: IdentityKey.generate() for name in ("pod-a", "pod-b", "pod-c")}
    for name, key in pods.items():
        assert (await hub.caller(key).call("POST", "/v1/pods/register", hub.pod_registration(key, name)))[0] == 200
    raw = task_submission(modeller, ["pod-a", "pod-b"])
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    return modeller, pods, json.loads(raw)["envelope"]["payload"]["task_id"]


def _advert(task_id: str, pod: str, *, round_index: int = 0, c: str = C_KEY) -> KeyAdvertisement:
    return KeyAdvertisement(task_id=task_id, round=round_index, pod=pod, c_public=c, s_public=S_KEY)


async def test_a_cohort_pod_posts_its_advert_once_and_a_different_second_one_is_409(hub: Any) -> None:
    modeller, pods, task_id = await _cohort(hub)
    path = round_path(task_id, 0, "advert")
    first = envelope_bytes(sign_envelope(_advert(task_id, "pod-a"), pods["pod-a"]))
    assert (await hub.caller(pods["pod-a"]).call("POST", path, raw=first))[0] == 201
    assert (await hub.caller(pods["pod-a"]).call("POST", path, raw=first))[1]["outcome"] == "duplicate"
    other = envelope_bytes(
        sign_envelope(_advert(task_id, "pod-a", c=base64.b64encode(b"d" * 32).decode()), pods["pod-a"])
    )
    status, body = await hub.caller(pods["pod-a"]).call("POST", path, raw=other)
    assert status == 409 and "one message per sender and stage" in body["error"]
    status, got = await hub.caller(modeller).call("GET", path + "?wait=0")
    assert status == 200 and got["count"] == 1 and got["messages"][0]["payload"]["c_public"] == C_KEY


async def test_a_masked_input_names_only_its_pods_own_upload(hub: Any) -> None:
    """A pod's masked input naming another key's blob (or one the hub does not hold) is refused and not stored:
    naming it would keep that blob from collection. Its own upload is taken, and referenced from then on."""
    _, pods, task_id = await _cohort(hub)

    async def put(key: IdentityKey, data: bytes) -> BlobRef:
        sha = hashlib.sha256(data).hexdigest()
        headers = sign_request(key, "PUT", f"/v1/blobs/{sha}", b"", now=int(time.time()))
        async with hub.session.put(f"{hub.base}/v1/blobs/{sha}", data=data, headers=headers) as resp:
            assert resp.status == 201
        return BlobRef(sha256=sha, size_bytes=len(data), encoding="safetensors")

    theirs, mine = await put(pods["pod-a"], os.urandom(64)), await put(pods["pod-b"], os.urandom(64))
    path = round_path(task_id, 0, "masked")

    async def post(blob: BlobRef) -> tuple[int, Any]:
        masked = MaskedInput(task_id=task_id, round=0, pod="pod-b", blob=blob)
        status, body = await hub.caller(pods["pod-b"]).call(
            "POST", path, raw=envelope_bytes(sign_envelope(masked, pods["pod-b"]))
        )
        return status, body

    for blob in (theirs, BlobRef(sha256="9" * 64, size_bytes=64, encoding="safetensors")):
        status, body = await post(blob)
        assert status == 424 and "not uploaded by this key" in body["error"]
    assert hub.storage.round_messages(task_id, 0, "masked") == []
    assert (await post(mine))[0] == 201
    assert hub.storage.unreferenced_blobs(uploaded_before=hub.storage.get_blob(mine.sha256).created_at + 1) == [
        theirs.sha256
    ]


async def test_outsiders_wrong_senders_and_other_rounds_are_refused(hub: Any) -> None:
    modeller, pods, task_id = await _cohort(hub)
    path = round_path(task_id, 0, "advert")
    # pod-c is registered but not a target of the task.
    outsider = envelope_bytes(sign_envelope(_advert(task_id, "pod-c"), pods["pod-c"]))
    status, body = await hub.caller(pods["pod-c"]).call("POST", path, raw=outsider)
    assert status == 403 and "modeller and target pods" in body["error"]
    assert (await hub.caller(pods["pod-c"]).call("GET", path))[0] == 403
    # pod-a posting an advert naming pod-b, or signed by another key.
    posing = envelope_bytes(sign_envelope(_advert(task_id, "pod-b"), pods["pod-a"]))
    assert (await hub.caller(pods["pod-a"]).call("POST", path, raw=posing))[0] == 403
    forged = envelope_bytes(sign_envelope(_advert(task_id, "pod-a"), pods["pod-b"]))
    assert (await hub.caller(pods["pod-a"]).call("POST", path, raw=forged))[0] == 403
    # A message of round 1 posted under round 0; a pod posting the modeller's stage.
    replayed = envelope_bytes(sign_envelope(_advert(task_id, "pod-a", round_index=1), pods["pod-a"]))
    status, body = await hub.caller(pods["pod-a"]).call("POST", path, raw=replayed)
    assert status == 400 and "not the URL's" in body["error"]
    committed = envelope_bytes(
        sign_envelope(CommittedList(task_id=task_id, round=0, to="pod-a", committed=["pod-a"]), pods["pod-a"])
    )
    assert (await hub.caller(pods["pod-a"]).call("POST", round_path(task_id, 0, "committed"), raw=committed))[0] == 403
    status, body = await hub.caller(pods["pod-a"]).call(
        "POST", round_path(task_id, 0, "advert"), raw=b"x" * (MAX_STAGE_BYTES["advert"] + 1)
    )
    assert status == 413
    # The modeller may post its own stages only.
    signed = envelope_bytes(
        sign_envelope(CommittedList(task_id=task_id, round=0, to="pod-a", committed=["pod-a"]), modeller)
    )
    assert (await hub.caller(modeller).call("POST", round_path(task_id, 0, "committed"), raw=signed))[0] == 201
    assert (
        await hub.caller(modeller).call(
            "POST", path, raw=envelope_bytes(sign_envelope(_advert(task_id, "pod-a"), modeller))
        )
    )[0] == 403


async def test_a_pod_reads_only_the_ciphertexts_addressed_to_it(hub: Any) -> None:
    modeller, pods, task_id = await _cohort(hub)
    path = round_path(task_id, 0, "shares")
    for sender, receiver in (("pod-a", "pod-b"), ("pod-b", "pod-a")):
        shares = EncryptedShares(task_id=task_id, round=0, pod=sender, ciphertexts={receiver: f"Zm9y{sender[-1]}A=="})
        assert (
            await hub.caller(pods[sender]).call("POST", path, raw=envelope_bytes(sign_envelope(shares, pods[sender])))
        )[0] == 201
    status, got = await hub.caller(pods["pod-b"]).call("GET", path)
    assert status == 200 and got == {"count": 2, "shares": {"pod-a": "Zm9yaA=="}}
    status, got = await hub.caller(modeller).call("GET", path)
    assert [m["payload"]["pod"] for m in got["messages"]] == ["pod-a", "pod-b"]


async def test_the_long_poll_answers_when_a_message_arrives_and_is_bounded_otherwise(hub: Any) -> None:
    modeller, pods, task_id = await _cohort(hub)
    path = round_path(task_id, 0, "advert")
    waiting = asyncio.create_task(hub.caller(modeller).call("GET", path + "?wait=10&after=0"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    advert = envelope_bytes(sign_envelope(_advert(task_id, "pod-b"), pods["pod-b"]))
    assert (await hub.caller(pods["pod-b"]).call("POST", path, raw=advert))[0] == 201
    status, got = await asyncio.wait_for(waiting, 5)
    assert status == 200 and got["count"] == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, got = await hub.caller(modeller).call("GET", path + "?wait=0.3&after=1")
    assert status == 200 and got["count"] == 1 and 0.25 <= loop.time() - started < 3


async def test_a_pod_reads_only_the_stages_it_needs_never_others_masked_inputs_or_unmask_answers(hub: Any) -> None:
    modeller, pods, task_id = await _cohort(hub)
    for stage in ("advert", "masked", "unmask"):
        status, body = await hub.caller(pods["pod-a"]).call("GET", round_path(task_id, 0, stage) + "?wait=0")
        assert status == 403 and "only the modeller does" in body["error"], stage
        assert (await hub.caller(modeller).call("GET", round_path(task_id, 0, stage) + "?wait=0"))[0] == 200
    for stage in ("roster", "committed", "survivors", "shares", "consistency"):
        assert (await hub.caller(pods["pod-a"]).call("GET", round_path(task_id, 0, stage) + "?wait=0"))[0] == 200



async def test_a_pod_reads_only_the_modeller_s_messages_addressed_to_it_and_the_lists_that_name_it(hub: Any) -> None:
    modeller, pods, task_id = await _cohort(hub)
    committed = round_path(task_id, 0, "committed")
    for to in ("pod-a", "pod-b"):
        signed = envelope_bytes(sign_envelope(CommittedList(task_id=task_id, round=0, to=to, committed=[to]), modeller))
        assert (await hub.caller(modeller).call("POST", committed, raw=signed))[0] == 201
    status, got = await hub.caller(pods["pod-b"]).call("GET", committed + "?wait=0")
    assert status == 200 and got["count"] == 1 and got["messages"][0]["payload"]["to"] == "pod-b"
    # pod-c is registered but not in the task: nothing may be addressed to it.
    stray = envelope_bytes(sign_envelope(CommittedList(task_id=task_id, round=0, to="pod-c", committed=[]), modeller))
    status, body = await hub.caller(modeller).call("POST", committed, raw=stray)
    assert status == 400 and "addressed to 'pod-c', not a pod of this task" in body["error"]
    # pod-a's signed list names pod-a only: pod-b is not shown it.
    consistency = round_path(task_id, 0, "consistency")
    view = ConsistencySignature(task_id=task_id, round=0, pod="pod-a", survivors=["pod-a"], dropped=[])
    signed_view = envelope_bytes(sign_envelope(view, pods["pod-a"]))
    assert (await hub.caller(pods["pod-a"]).call("POST", consistency, raw=signed_view))[0] == 201
    assert (await hub.caller(pods["pod-b"]).call("GET", consistency + "?wait=0"))[1] == {"count": 0, "messages": []}
    assert (await hub.caller(pods["pod-a"]).call("GET", consistency + "?wait=0"))[1]["count"] == 1


async def _bytes_one_pod_reads(hub: Any, n: int) -> int:
    """Every pod of an n-pod cohort posts its shares and consistency list, the modeller each pod's roster and
    the reader's neighbourhood their committed and survivor lists (full-size, as in a round where nobody
    drops; fewer than the hub's per-key burst of requests); the bytes the reader then reads."""
    modeller = IdentityKey.generate()
    registration = {"name": "m", "public_key": modeller.public.to_b64()}
    assert (await hub.caller(modeller).call("POST", "/v1/modellers/register", registration))[0] == 200
    names = [f"p{n}-{i:04d}" for i in range(n)]
    keys = {name: IdentityKey.generate() for name in names}
    for name in names:
        body = hub.pod_registration(keys[name], name)
        assert (await hub.caller(keys[name]).call("POST", "/v1/pods/register", body))[0] == 200
    raw = task_submission(modeller, names)
    assert (await hub.caller(modeller).call("POST", "/v1/tasks", raw=raw))[0] == 201
    payload = json.loads(raw)["envelope"]["payload"]
    task_id = payload["task_id"]
    tree = cohort_tree(entries(names))
    graph = cohort_graph(dict(enumerate(tree.pods)), size=n, cohort_root=payload["cohort"]["root"], task_id=task_id,
                         round_index=0)
    adverts = {name: sign_envelope(_advert(task_id, name), keys[name]) for name in names}
    box = base64.b64encode(bytes(CIPHERTEXT_BYTES)).decode()
    fields = {"task_id": task_id, "round": 0}
    reader = names[0]
    for pod in names:
        around = [pod, *graph.neighbours(pod)]
        lists = [
            ("committed", CommittedList(**fields, to=pod, committed=around), modeller),
            ("survivors", SurvivorList(**fields, to=pod, survivors=around, dropped=[]), modeller),
        ] if graph.adjacent(pod, reader) else []
        for stage, message, key in (
            ("roster", AdvertRoster(**fields, to=pod, members=[tree.proof(p) for p in around],
                                    adverts=[adverts[p] for p in around]), modeller),
            *lists,
            ("shares", EncryptedShares(**fields, pod=pod, ciphertexts=dict.fromkeys(around[1:], box)), keys[pod]),
            ("consistency", ConsistencySignature(**fields, pod=pod, survivors=around, dropped=[]), keys[pod]),
        ):
            body = envelope_bytes(sign_envelope(message, key))
            assert (await hub.caller(key).call("POST", round_path(task_id, 0, stage), raw=body))[0] == 201
    total = 0
    for stage in ("roster", "committed", "survivors", "shares", "consistency"):
        status, got = await hub.caller(keys[reader]).call("GET", round_path(task_id, 0, stage) + "?wait=0")
        assert status == 200 and got["count"] >= 1, stage
        total += len(json.dumps(got))
    return total


async def test_what_a_pod_reads_of_a_secure_round_grows_with_log_n_not_with_the_cohort(hub: Any) -> None:
    # Both cohorts are sparse with degree 16 (graph.default_degree), so only the proofs grow: log2(n) hashes.
    small, large = await _bytes_one_pod_reads(hub, 20), await _bytes_one_pod_reads(hub, 200)
    print(f"bytes one pod reads in a secure round: {small} at 20 pods, {large} at 200 ({large / small:.2f}x)")
    assert large / small < math.log2(200) / math.log2(20) < 10, (small, large)  # linear growth would be 10x
