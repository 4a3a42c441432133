"""Thousands of random and mutated envelopes: the verifier only ever refuses with a code or
accepts exactly what a policy key signed."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import NOW, POD, SCHEMA, make_task, policy_for, privacy, proof_for, signed, verifier_for

from pod_agent.errors import TaskRefused
from pod_agent.policy import RefusalCode, VerifiedTask
from pod_agent.protocol import IdentityKey, canonical_json, parse_envelope
from pod_agent.protocol.messages import Hyperparameters
from pod_agent.state import Verdict

ALICE, BOB, MALLORY = IdentityKey.generate(), IdentityKey.generate(), IdentityKey.generate()
POLICY_KEYS = {ALICE.key_id: ALICE.public, BOB.key_id: BOB.public}
CODES = {c.value for c in RefusalCode}
FAST = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# Structured strategies cost more per example to generate; fewer of them keep the suite to seconds.
STRUCTURED = settings(FAST, max_examples=300)


class _ForgetfulNonces:
    """Never reports a replay, so that every mutant is judged on its own merits."""

    def ensure_unseen(self, *, task_id: str, nonce: str) -> None:
        return None

    def record_verdict(self, verdict: Verdict, reservation: object = None) -> None:
        return None


VERIFIER = verifier_for(policy_for(ALICE, BOB), privacy(), _ForgetfulNonces())
VALID = signed(make_task(ALICE), ALICE)
VALID_PAYLOAD = canonical_json(json.loads(VALID)["payload"])


def _judge(raw: bytes, *, proof_of: bytes = VALID) -> VerifiedTask | None:
    """Verify ``raw`` delivered with the proof of ``proof_of``'s cohort; a refusal must carry a known code, an
    acceptance must be validly signed by a policy key."""
    try:
        verified = VERIFIER.verify(raw, proof=proof_for(proof_of), now=NOW)
    except TaskRefused as refusal:
        assert refusal.code in CODES
        return None
    env = parse_envelope(raw)
    key = POLICY_KEYS[env.signer]
    key.verify(base64.b64decode(env.signature), canonical_json(env.payload))
    assert canonical_json(verified.payload) == canonical_json(env.payload)
    return verified


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@FAST
@given(st.binary(max_size=3000))
def test_random_bytes_are_refused_with_a_code(raw: bytes) -> None:
    assert _judge(raw) is None


@STRUCTURED
@given(
    payload=st.dictionaries(
        st.sampled_from(["task_id", "kind", "pods", "nonce", "v", "model", "x"]) | st.text(max_size=6),
        json_values,
        max_size=8,
    ),
    signer=st.sampled_from([ALICE.key_id, BOB.key_id, MALLORY.key_id])
    | st.text("0123456789abcdef", min_size=64, max_size=64),
    signature=st.binary(min_size=0, max_size=80).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=90),
    extra=st.dictionaries(st.text(max_size=5), json_values, max_size=2),
)
def test_random_envelopes_are_refused_with_a_code(
    payload: dict[str, Any], signer: str, signature: str, extra: dict[str, Any]
) -> None:
    envelope = {"v": 1, "payload": payload, "signer": signer, "signature": signature} | extra
    raw = json.dumps(envelope, allow_nan=True).encode("utf-8", "surrogatepass")
    assert _judge(raw) is None


@FAST
@given(st.data())
def test_byte_mutations_of_a_signed_task_never_change_what_is_accepted(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del raw[at : at + data.draw(st.integers(1, 8))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    verified = _judge(bytes(raw))
    if verified is not None:  # e.g. whitespace inserted between tokens: the same signed task
        assert canonical_json(verified.payload) == VALID_PAYLOAD


def _leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in _leaf_paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value) for p in _leaf_paths(v, (*prefix, i))]
    return [prefix]


@STRUCTURED
@given(st.data())
def test_field_mutations_of_a_signed_payload_are_refused_unless_canonically_equal(data: st.DataObject) -> None:
    env = json.loads(VALID)
    payload = env["payload"]
    path = data.draw(st.sampled_from([p for p in _leaf_paths(payload) if p]))
    target = payload
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(json_values)
    raw = json.dumps(env).encode("utf-8", "surrogatepass")
    verified = _judge(raw)
    if verified is not None:
        assert canonical_json(verified.payload) == VALID_PAYLOAD


@STRUCTURED
@given(
    key=st.sampled_from([ALICE, BOB, MALLORY]),
    kind=st.sampled_from(["train", "evaluate", "predict"]),
    pods=st.lists(st.sampled_from([POD, "pod-b", "pod-c"]), min_size=1, max_size=3, unique=True),
    issued=st.integers(-5000, 200),
    lifetime=st.integers(1, 100_000),
    epochs=st.integers(1, 30),
    schema=st.sampled_from([SCHEMA, "00" * 32]),
)
def test_well_formed_tasks_are_accepted_only_from_policy_keys_within_policy(
    key: IdentityKey, kind: str, pods: list[str], issued: int, lifetime: int, epochs: int, schema: str
) -> None:
    task = make_task(key, kind=kind, pods=pods, issued_at=NOW + issued, expires_at=NOW + issued + lifetime,
                     hyperparameters=Hyperparameters(epochs=epochs), schema_hash=schema)
    raw = signed(task, key)
    verified = _judge(raw, proof_of=raw)
    if verified is None:
        return
    assert key is not MALLORY
    assert POD in pods and schema == SCHEMA and epochs <= (20 if key is ALICE else 5)
    assert task.issued_at <= NOW + 60 and task.expires_at + 60 >= NOW
    assert kind != "predict" or key is ALICE
