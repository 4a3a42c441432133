"""Signed envelopes: sign -> JSON -> verify round trips, and every tampering fails."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from pod_agent.errors import ProtocolError
from pod_agent.protocol import (
    CohortEntry,
    IdentityKey,
    canonical_json,
    cohort_tree,
    envelope_bytes,
    open_envelope,
    parse_envelope,
    sign_envelope,
    source_sha256,
)
from pod_agent.protocol.messages import (
    BlobRef,
    DataSelection,
    Envelope,
    Hyperparameters,
    ModelRef,
    ProgressEvent,
    ResultPayload,
    TaskPayload,
)

KEY = IdentityKey.generate()
OTHER = IdentityKey.generate()
COHORT = cohort_tree([CohortEntry(pod=p, schema_hash="ab" * 32, key_id=KEY.key_id) for p in "ab"]).commitment


def _task(source: str = "class Net: pass\n") -> TaskPayload:
    return TaskPayload(
        task_id=str(uuid.uuid4()), modeller_id=KEY.key_id, issued_at=1,
        cohort=COHORT, expires_at=2,
        nonce=uuid.uuid4().hex, kind="train",
        model=ModelRef(style="module", name="net", class_name="Net", source=source, sha256=source_sha256(source)),
        hyperparameters=Hyperparameters(epochs=1, learning_rate=0.003, extra={"momentum": 0.9, "nesterov": True}),
        data=DataSelection(target="income"),
    )


def test_task_round_trips_through_signed_json() -> None:
    task = _task()
    wire = envelope_bytes(sign_envelope(task, KEY))
    assert open_envelope(parse_envelope(wire), TaskPayload, KEY.public) == task


def test_result_from_a_pod_round_trips_and_names_its_signer() -> None:
    result = ResultPayload(
        task_id=str(uuid.uuid4()),
        pod="a",
        kind="train",
        status="done",
        metrics={"loss": 0.25},
        n_rows=100,
        blob=BlobRef(sha256="cd" * 32, size_bytes=10, encoding="safetensors"),
        produced_at=5,
    )
    env = parse_envelope(json.dumps(json.loads(envelope_bytes(sign_envelope(result, KEY))), indent=2))
    assert env.signer == KEY.key_id
    assert open_envelope(env, ResultPayload, KEY.public) == result


def test_signature_covers_exactly_the_canonical_payload_bytes() -> None:
    task = _task()
    env = sign_envelope(task, KEY)
    KEY.public.verify(base64.b64decode(env.signature), canonical_json(task))


def test_non_nfc_source_is_signed_and_delivered_in_nfc() -> None:
    task = _task("# cafe\u0301\nclass Net: pass\n")
    opened = open_envelope(parse_envelope(envelope_bytes(sign_envelope(task, KEY))), TaskPayload, KEY.public)
    assert opened.model is not None
    assert opened.model.source == "# caf\u00e9\nclass Net: pass\n"
    assert source_sha256(opened.model.source) == opened.model.sha256


def test_envelope_opened_with_another_key_is_refused() -> None:
    env = sign_envelope(_task(), KEY)
    with pytest.raises(ProtocolError, match="is not the expected key"):
        open_envelope(env, TaskPayload, OTHER.public)


def test_envelope_re_signed_by_another_key_under_the_original_signer_is_refused() -> None:
    forged = sign_envelope(_task(), OTHER).model_copy(update={"signer": KEY.key_id})
    with pytest.raises(ProtocolError, match="does not verify"):
        open_envelope(forged, TaskPayload, KEY.public)


def test_changed_payload_field_is_refused() -> None:
    env = sign_envelope(_task(), KEY)
    tampered = Envelope(payload=env.payload | {"pods": ["a", "b", "c"]}, signer=env.signer, signature=env.signature)
    with pytest.raises(ProtocolError, match="does not verify"):
        open_envelope(tampered, TaskPayload, KEY.public)


def test_flipped_signature_byte_is_refused() -> None:
    env = sign_envelope(_task(), KEY)
    sig = bytearray(base64.b64decode(env.signature))
    sig[10] ^= 0x80
    tampered = env.model_copy(update={"signature": base64.b64encode(bytes(sig)).decode()})
    with pytest.raises(ProtocolError, match="does not verify"):
        open_envelope(tampered, TaskPayload, KEY.public)


def test_valid_signature_over_the_wrong_message_type_is_refused() -> None:
    progress = ProgressEvent(task_id="t", stage="training", step=3)
    env = sign_envelope(progress, KEY)
    with pytest.raises(ProtocolError, match="signed ResultPayload is invalid"):
        open_envelope(env, ResultPayload, KEY.public)


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"payload":{},"signer":"x","signature":""}',
        b'{"v":2,"payload":{},"signer":"' + b"a" * 64 + b'","signature":""}',
    ],
    ids=["list", "bad-signer", "future-version"],
)
def test_malformed_envelopes_are_refused_before_verification(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="envelope is invalid"):
        parse_envelope(raw)
