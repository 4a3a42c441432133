"""Secure-round routes of the hub: relay the signed messages of a task's secure aggregation rounds
(``protocol.secure_round``), each party reading only what is its own.

Only the task's modeller and its target pods may post or read a round's messages; each sender posts its own
stage (pods theirs, the modeller roster, committed and survivors), signed by the key the request is signed with,
naming the URL's task and round; one message per (sender, stage), a different second one is 409; the modeller's
are one per pod (addressed, ``to``). A pod reads only what is its own: the modeller's messages addressed to it,
the ciphertexts addressed to it in ``shares``, and the consistency signatures whose lists name it, so what it
receives grows with its neighbourhood, not the cohort. A read is a long poll (``HubState.long_poll``) woken by
each message stored for the round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

from pod_agent.errors import HubError
from pod_agent.hub.auth import SIGNER_POD, body_of, modeller_of
from pod_agent.hub.blob_routes import require_uploaded
from pod_agent.hub.hubstate import hub_of
from pod_agent.hub.reading import long_poll_query, opened
from pod_agent.hub.storage import BlobRefRecord, HubTaskRecord, RoundMessageRecord
from pod_agent.protocol import (
    MAX_STAGE_BYTES,
    MODELLER_SENDER,
    MODELLER_STAGES,
    POD_READ_STAGES,
    STAGE_MODELS,
    STAGES,
    AddressedMessage,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    PublicKey,
    Stage,
    addressed_sender,
    envelope_bytes,
)

routes = web.RouteTableDef()


def _round_wakeup_key(task_id: str, round_index: int) -> str:
    # Shares the pods' wake-up table; a pod name cannot contain ':'.
    return f"secagg:{task_id}:{round_index}"


@dataclass(frozen=True)
class _RoundParty:
    """Who asks about which round: the task, the requester's sender label and key, the stage and round."""

    task: HubTaskRecord
    sender: str
    key: PublicKey
    stage: Stage
    round: int


async def _round_party(request: web.Request) -> _RoundParty:
    """The requester as a party to the URL's round; 404/403 for anyone but the task's modeller and target
    pods."""
    hub = hub_of(request)
    stage = request.match_info["stage"]
    if stage not in STAGES:
        raise HubError(f"no secure-round stage {stage!r}; stages are {list(STAGES)}", status=404)
    task = await hub.db(hub.storage.get_task, request.match_info["task_id"])
    if task is None:
        raise HubError(f"no task {request.match_info['task_id']}", status=404)
    round_index = int(request.match_info["round"])
    pod = request[SIGNER_POD]
    if pod is not None and pod.name in task.pods:
        return _RoundParty(task, pod.name, PublicKey.from_b64(pod.public_key), stage, round_index)
    modeller = await modeller_of(request)
    if modeller is not None and modeller.key_id == task.modeller_id:
        return _RoundParty(task, MODELLER_SENDER, PublicKey.from_b64(modeller.public_key), stage, round_index)
    raise HubError(f"only task {task.task_id}'s modeller and target pods take part in its rounds", status=403)


@routes.post("/v1/secagg/{task_id}/{round:[0-9]{1,9}}/{stage}", name="secagg_post")
async def _secagg_post(request: web.Request) -> web.Response:
    """Relay one signed round message: the sender's own stage, signed by its own key, naming this round."""
    hub = hub_of(request)
    party = await _round_party(request)
    task, sender, stage, round_index = party.task, party.sender, party.stage, party.round
    raw = body_of(request)
    if len(raw) > MAX_STAGE_BYTES[stage]:
        raise HubError(f"{stage} message is {len(raw)} bytes, over {MAX_STAGE_BYTES[stage]}", status=413)
    if (stage in MODELLER_STAGES) != (sender == MODELLER_SENDER):
        raise HubError(f"{sender!r} may not send the {stage} message of a round", status=403)
    envelope, message = opened(raw, STAGE_MODELS[stage], party.key, what=stage)
    if message.task_id != task.task_id or message.round != round_index:
        raise HubError(f"{stage} message names task {message.task_id} round {message.round}, not the URL's", status=400)
    named = getattr(message, "pod", sender)  # only a pod's messages name their pod
    if named != sender:
        raise HubError(f"{stage} message names pod {named!r} but was sent by {sender!r}", status=403)
    if isinstance(message, AddressedMessage):
        # The modeller's messages are one per pod: stored under the addressee, relayed to it alone.
        if message.to not in task.pods:
            raise HubError(f"{stage} message is addressed to {message.to!r}, not a pod of this task", status=400)
        sender = addressed_sender(message.to)
    record = RoundMessageRecord(
        task_id=task.task_id, round=round_index, stage=stage, sender=sender, envelope=envelope_bytes(envelope),
        received_at=hub.now(),
    )
    # A masked input names its pod's own upload, referenced with the message (424 when the hub no longer has it).
    refs = []
    if isinstance(message, MaskedInput):
        sha256, size_bytes = message.blob.sha256, message.blob.size_bytes
        await require_uploaded(hub, sha256, party.key.key_id, size_bytes=size_bytes, what="masked input")
        refs.append(BlobRefRecord(sha256, "masked", task.task_id, sender))
    outcome = await hub.db(hub.storage.put_round_message, record, refs=refs)
    hub.notify(_round_wakeup_key(task.task_id, round_index))
    return web.json_response({"ok": True, "outcome": outcome}, status=201 if outcome == "stored" else 200)


@routes.get("/v1/secagg/{task_id}/{round:[0-9]{1,9}}/{stage}", name="secagg_get")
async def _secagg_get(request: web.Request) -> web.Response:
    """Long poll: a stage's messages once more than ``after`` are held, or when the wait ends."""
    hub = hub_of(request)
    party = await _round_party(request)
    task, reader, stage, round_index = party.task, party.sender, party.stage, party.round
    if reader != MODELLER_SENDER and stage not in POD_READ_STAGES:
        raise HubError(f"a pod does not read the {stage} messages of a round; only the modeller does", status=403)
    wait_s, after = long_poll_query(request, what="a count of messages")

    async def fetch() -> list[RoundMessageRecord]:
        held: list[RoundMessageRecord] = await hub.db(hub.storage.round_messages, task.task_id, round_index, stage)
        return held if reader == MODELLER_SENDER else _records_for(reader, stage, held)

    records = await hub.long_poll(
        _round_wakeup_key(task.task_id, round_index), wait_s, fetch=fetch, ready=lambda held: len(held) > after
    )
    if stage == "shares" and reader != MODELLER_SENDER:
        return web.json_response({"count": len(records), "shares": _shares_for(reader, records)})
    return web.json_response({"count": len(records), "messages": [json.loads(r.envelope) for r in records]})


def _records_for(reader: str, stage: Stage, records: list[RoundMessageRecord]) -> list[RoundMessageRecord]:
    """What pod ``reader`` may read of a stage: the modeller's message addressed to it, the consistency
    signatures whose lists name it (its neighbours', by their own signed word: a pod that names a stranger
    only shows the stranger a list it cannot check), and the shares records (cut by ``_shares_for``)."""
    if stage in MODELLER_STAGES:
        mine = addressed_sender(reader)
        return [record for record in records if record.sender == mine]
    if stage == "consistency":
        out = []
        for record in _naming(reader, records):
            view = ConsistencySignature.model_validate(json.loads(record.envelope)["payload"])
            if reader in view.survivors or reader in view.dropped:
                out.append(record)
        return out
    return records


def _naming(reader: str, records: list[RoundMessageRecord]) -> list[RoundMessageRecord]:
    """The records whose bytes hold ``reader``'s name as a JSON string: each pod polls a stage of up to
    a cohort's messages, of which only its neighbours' name it, so the rest are skipped unparsed."""
    quoted = json.dumps(reader).encode()
    return [record for record in records if quoted in record.envelope]


def _shares_for(reader: str, records: list[RoundMessageRecord]) -> dict[str, str]:
    """Sender -> the ciphertext it addressed to ``reader`` (authenticated by the AEAD, not by the hub)."""
    out: dict[str, str] = {}
    for record in _naming(reader, records):
        shares = EncryptedShares.model_validate(json.loads(record.envelope)["payload"])
        if reader in shares.ciphertexts:
            out[record.sender] = shares.ciphertexts[reader]
    return out
