"""Every refusal code, each from a real signed message or a real tampering of one."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

import pytest
from policy_helpers import (
    NOW,
    POD,
    ROW_COUNT,
    SCHEMA,
    SOURCE,
    Pod,
    make_task,
    policy_for,
    privacy,
    proof_for,
    signed,
    verifier_for,
)

from pod_agent.config.settings import ModellerPolicy, SecuritySection
from pod_agent.errors import ConfigError
from pod_agent.policy import RefusalCode, TaskVerifier, check_fetched_source
from pod_agent.protocol import IdentityKey, canonical_json, envelope_bytes, sign_envelope, source_sha256, spec_sha256
from pod_agent.protocol.messages import Hyperparameters, ModelRef
from pod_agent.state import PodState, TaskStatus


def _edit(raw: bytes, change: Callable[[dict[str, object]], None]) -> bytes:
    env = json.loads(raw)
    change(env)
    return json.dumps(env).encode()


def _flip_b64_byte(text: str, index: int) -> str:
    data = bytearray(base64.b64decode(text))
    data[index] ^= 0x01
    return base64.b64encode(bytes(data)).decode()




def test_validly_signed_task_from_a_super_modeller_is_accepted_and_queued(pod: Pod, alice: IdentityKey) -> None:
    task = make_task(alice)
    verified = pod.accept(signed(task, alice))
    assert verified.payload == task
    assert verified.modeller.name == "alice"
    record = pod.state.get_task(task.task_id)
    assert record is not None and record.status is TaskStatus.ACCEPTED
    assert record.payload() == task


# -- size and parse -----------------------------------------------------------------------------


def test_message_over_max_task_bytes_is_refused_before_parsing(
    make_pod: Callable[..., Pod], alice: IdentityKey
) -> None:
    pod = make_pod(max_task_bytes=2000)
    big = SOURCE + "#" * 3000
    raw = signed(make_task(alice, model=ModelRef(style="module", name="m", class_name="Net", source=big,
                                                 sha256=source_sha256(big))), alice)
    refusal = pod.refusal(raw)
    assert refusal.code == RefusalCode.PAYLOAD_TOO_LARGE.value
    assert "max_task_bytes" in refusal.detail
    assert pod.state.list_tasks() == []


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b"{}", b'{"v":1,"payload":{},"signer":"zz","signature":""}', b"\xff\xfe{}",
     b'{"v":1,"v":1,"payload":{},"signer":"' + b"0" * 64 + b'","signature":""}', b'{"x": NaN}', b"[" * 10_000],
    ids=["empty", "text", "list", "empty-object", "bad-signer", "not-utf8", "duplicate-key", "nan", "deep"],
)
def test_unparseable_message_is_refused_as_malformed(pod: Pod, raw: bytes) -> None:
    assert pod.refusal(raw).code == RefusalCode.MALFORMED.value


def test_signed_payload_that_is_not_a_task_is_refused_as_malformed(pod: Pod, alice: IdentityKey) -> None:
    task = make_task(alice)
    body = task.model_dump(mode="json") | {"surprise": True}
    raw = canonical_json({"v": 1, "payload": body, "signer": alice.key_id,
                          "signature": base64.b64encode(alice.sign(canonical_json(body))).decode()})
    refusal = pod.refusal(raw)
    assert refusal.code == RefusalCode.MALFORMED.value
    assert refusal.task_id is None
    assert pod.state.list_tasks() == []


def test_task_claiming_another_modeller_id_is_refused_as_malformed(
    pod: Pod, alice: IdentityKey, bob: IdentityKey
) -> None:
    refusal = pod.refusal(signed(make_task(alice, modeller_id=bob.key_id), alice))
    assert refusal.code == RefusalCode.MALFORMED.value
    assert "not its signer" in refusal.detail


def test_train_task_without_model_is_refused_as_malformed(pod: Pod, alice: IdentityKey) -> None:
    assert pod.refusal(signed(make_task(alice, model=None), alice)).code == RefusalCode.MALFORMED.value


# -- signer and signature -----------------------------------------------------------------------


def test_task_signed_by_an_unlisted_key_is_refused_as_unknown_signer(pod: Pod, mallory: IdentityKey) -> None:
    refusal = pod.refusal(signed(make_task(mallory), mallory))
    assert refusal.code == RefusalCode.UNKNOWN_SIGNER.value
    assert refusal.task_id is None  # an unauthenticated id is never handed to the caller
    assert pod.state.list_tasks() == []


def test_empty_policy_refuses_everything(make_pod: Callable[..., Pod], alice: IdentityKey) -> None:
    pod = make_pod(SecuritySection())
    assert pod.refusal(signed(make_task(alice), alice)).code == RefusalCode.UNKNOWN_SIGNER.value


def test_flipped_key_id_is_refused_as_unknown_signer(pod: Pod, alice: IdentityKey) -> None:
    def flip(env: dict[str, object]) -> None:
        signer = str(env["signer"])
        env["signer"] = ("1" if signer[0] == "0" else "0") + signer[1:]

    assert pod.refusal(_edit(signed(make_task(alice), alice), flip)).code == RefusalCode.UNKNOWN_SIGNER.value


def test_signer_swapped_to_another_listed_key_is_refused_as_bad_signature(
    pod: Pod, alice: IdentityKey, bob: IdentityKey
) -> None:
    raw = _edit(signed(make_task(alice, modeller_id=bob.key_id), alice), lambda env: env.update(signer=bob.key_id))
    assert pod.refusal(raw).code == RefusalCode.BAD_SIGNATURE.value


@pytest.mark.parametrize("index", [0, 31, 63])
def test_flipped_signature_byte_is_refused_as_bad_signature(pod: Pod, alice: IdentityKey, index: int) -> None:
    raw = _edit(
        signed(make_task(alice), alice), lambda env: env.update(signature=_flip_b64_byte(str(env["signature"]), index))
    )
    refusal = pod.refusal(raw)
    assert refusal.code == RefusalCode.BAD_SIGNATURE.value
    assert pod.state.list_tasks() == []


def test_flipped_payload_byte_is_refused_as_bad_signature(pod: Pod, alice: IdentityKey) -> None:
    raw = bytearray(signed(make_task(alice, hyperparameters=Hyperparameters(epochs=2)), alice))
    at = raw.index(b'"epochs":2') + len(b'"epochs":')
    raw[at] = ord("3")
    assert pod.refusal(bytes(raw)).code == RefusalCode.BAD_SIGNATURE.value


def test_model_source_changed_after_signing_is_refused_as_bad_signature(pod: Pod, alice: IdentityKey) -> None:
    def swap(env: dict[str, object]) -> None:
        payload = env["payload"]
        assert isinstance(payload, dict)
        payload["model"]["source"] = SOURCE + "import os; os.system('curl evil')\n"

    assert pod.refusal(_edit(signed(make_task(alice), alice), swap)).code == RefusalCode.BAD_SIGNATURE.value


def test_task_re_signed_by_another_key_under_the_original_signer_is_refused(
    pod: Pod, alice: IdentityKey, mallory: IdentityKey
) -> None:
    forged = sign_envelope(make_task(alice), mallory).model_copy(update={"signer": alice.key_id})
    assert pod.refusal(envelope_bytes(forged)).code == RefusalCode.BAD_SIGNATURE.value


def test_signature_that_is_not_base64_is_refused_as_bad_signature(pod: Pod, alice: IdentityKey) -> None:
    raw = _edit(signed(make_task(alice), alice), lambda env: env.update(signature="***"))
    assert pod.refusal(raw).code == RefusalCode.BAD_SIGNATURE.value


# -- time ---------------------------------------------------------------------------------------


def test_expired_task_is_refused(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice, issued_at=NOW - 7200, expires_at=NOW - 61), alice)
    assert pod.refusal(raw).code == RefusalCode.EXPIRED.value
    assert pod.state.list_tasks() == []


def test_task_expired_within_clock_skew_is_accepted(pod: Pod, alice: IdentityKey) -> None:
    pod.accept(signed(make_task(alice, issued_at=NOW - 7200, expires_at=NOW - 59), alice))


def test_task_issued_in_the_future_is_refused_as_not_yet_valid_and_accepted_later(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice, issued_at=NOW + 120, expires_at=NOW + 3600), alice)
    assert pod.refusal(raw).code == RefusalCode.NOT_YET_VALID.value
    assert pod.state.list_tasks() == []  # not recorded: the same task is fine once valid
    pod.accept(raw, now=NOW + 100)


def test_task_living_longer_than_max_lifetime_is_refused(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice, issued_at=NOW - 10, expires_at=NOW + 24 * 3600), alice)
    assert pod.refusal(raw).code == RefusalCode.LIFETIME_EXCEEDED.value


def test_task_expiring_before_it_was_issued_is_refused_as_malformed(pod: Pod, alice: IdentityKey) -> None:
    assert (
        pod.refusal(signed(make_task(alice, issued_at=NOW, expires_at=NOW - 1), alice)).code
        == RefusalCode.MALFORMED.value
    )


# -- replay -------------------------------------------------------------------------------------


def test_same_task_twice_is_refused_as_replay(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice), alice)
    pod.accept(raw)
    assert pod.refusal(raw).code == RefusalCode.REPLAY.value


def test_reused_nonce_under_a_new_task_id_is_refused_as_replay(pod: Pod, alice: IdentityKey) -> None:
    first = make_task(alice)
    pod.accept(signed(first, alice))
    again = first.model_copy(update={"task_id": str(uuid.uuid4())})
    assert pod.refusal(signed(again, alice)).code == RefusalCode.REPLAY.value


def test_reused_task_id_under_a_new_nonce_is_refused_as_replay(pod: Pod, alice: IdentityKey) -> None:
    first = make_task(alice)
    pod.accept(signed(first, alice))
    again = first.model_copy(update={"nonce": uuid.uuid4().hex})
    assert pod.refusal(signed(again, alice)).code == RefusalCode.REPLAY.value


def test_replay_of_a_policy_refused_task_is_refused_as_replay_even_after_policy_widens(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    narrow = make_pod()
    raw = signed(make_task(alice, schema_hash="00" * 32), alice)
    assert narrow.refusal(raw).code == RefusalCode.SCHEMA_MISMATCH.value
    record = narrow.state.list_tasks()[0]
    assert (record.status, record.reason) == (TaskStatus.REFUSED, "schema_mismatch")
    wider = TaskVerifier(security=policy_for(alice, bob), privacy=privacy(), pod_name=POD, schema_hash="00" * 32,
                         row_count=ROW_COUNT, nonces=narrow.state)
    with pytest.raises(Exception, match=r"\(replay\)"):
        wider.verify(raw, proof=proof_for(raw), now=NOW)


def test_replay_is_caught_across_a_restart(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice), alice)
    pod.accept(raw)
    path = pod.state.path
    pod.state.close()
    reopened = PodState.open(path)
    try:
        verifier = verifier_for(policy_for(alice, IdentityKey.generate()), privacy(), reopened)
        with pytest.raises(Exception, match=r"\(replay\)"):
            verifier.verify(raw, proof=proof_for(raw), now=NOW + 5)
    finally:
        reopened.close()
        pod.state = PodState.open(path)  # the fixture closes it again


# -- role and limits ----------------------------------------------------------------------------


def test_task_for_other_pods_is_refused_as_not_targeted(pod: Pod, alice: IdentityKey) -> None:
    refusal = pod.refusal(signed(make_task(alice, pods=["pod-b", "pod-c"]), alice))
    assert refusal.code == RefusalCode.NOT_TARGETED.value
    record = pod.state.get_task(refusal.task_id or "")
    assert record is not None and record.status is TaskStatus.REFUSED


def test_kind_outside_the_modellers_kinds_is_refused(pod: Pod, bob: IdentityKey) -> None:
    # bob may train and evaluate; allow_predict is false, so predict is refused by its own code first
    assert pod.refusal(signed(make_task(bob, kind="predict"), bob)).code == RefusalCode.PREDICT_NOT_PERMITTED.value


def test_kind_not_listed_is_refused_as_kind_not_permitted(make_pod: Callable[..., Pod], alice: IdentityKey) -> None:
    pod = make_pod(SecuritySection(modellers=[
        ModellerPolicy(name="alice", public_key=alice.public.to_b64(), role="super", kinds=["evaluate"])]))
    assert pod.refusal(signed(make_task(alice), alice)).code == RefusalCode.KIND_NOT_PERMITTED.value


def test_a_train_task_that_evaluates_first_needs_the_evaluate_kind(
    make_pod: Callable[..., Pod], alice: IdentityKey
) -> None:
    pod = make_pod(SecuritySection(modellers=[
        ModellerPolicy(name="alice", public_key=alice.public.to_b64(), role="super", kinds=["train"])]))
    pod.accept(signed(make_task(alice), alice))
    refusal = pod.refusal(signed(make_task(alice).model_copy(update={"evaluate_first": True}), alice))
    assert refusal.code == RefusalCode.KIND_NOT_PERMITTED.value and "evaluates first" in refusal.detail


def test_predict_is_accepted_only_where_allowed(pod: Pod, alice: IdentityKey) -> None:
    pod.accept(signed(make_task(alice, kind="predict", hyperparameters=Hyperparameters()), alice))


def test_schema_stats_is_permitted_to_a_modeller_who_may_evaluate(pod: Pod, bob: IdentityKey) -> None:
    pod.accept(signed(make_task(bob, kind="schema-stats", model=None, data=None), bob))


def test_general_modeller_with_unlisted_source_is_refused_as_role_not_permitted(pod: Pod, bob: IdentityKey) -> None:
    other = SOURCE + "# changed\n"
    model = ModelRef(style="module", name="vetted", class_name="Net", source=other, sha256=source_sha256(other))
    refusal = pod.refusal(signed(make_task(bob, model=model), bob))
    assert refusal.code == RefusalCode.ROLE_NOT_PERMITTED.value


def test_general_modeller_with_allow_listed_model_is_accepted(pod: Pod, bob: IdentityKey) -> None:
    pod.accept(signed(make_task(bob), bob))


def test_general_modeller_with_listed_hash_under_another_name_is_refused(pod: Pod, bob: IdentityKey) -> None:
    model = ModelRef(style="module", name="other", class_name="Net", source=SOURCE, sha256=source_sha256(SOURCE))
    assert pod.refusal(signed(make_task(bob, model=model), bob)).code == RefusalCode.ROLE_NOT_PERMITTED.value


def test_super_modeller_may_run_any_source(pod: Pod, alice: IdentityKey) -> None:
    other = "class Anything: pass\n"
    pod.accept(signed(make_task(alice, model=ModelRef(style="module", name="x", class_name="Anything", source=other,
                                                      sha256=source_sha256(other))), alice))


SPEC: dict[str, object] = {
    "layers": [{"type": "Linear", "out": 8}, {"type": "ReLU"}],
    "optimizer": "Adam",
    "loss": "CrossEntropy",
}


def test_general_modeller_may_run_a_declarative_spec_when_allowed(pod: Pod, bob: IdentityKey) -> None:
    model = ModelRef(style="declarative", name="spec", spec=SPEC, sha256=spec_sha256(SPEC))
    pod.accept(signed(make_task(bob, model=model), bob))


def test_declarative_spec_is_refused_for_general_when_disallowed(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    pod = make_pod(allow_declarative_models=False)
    model = ModelRef(style="declarative", name="spec", spec=SPEC, sha256=spec_sha256(SPEC))
    assert pod.refusal(signed(make_task(bob, model=model), bob)).code == RefusalCode.ROLE_NOT_PERMITTED.value


def test_a_declarative_model_by_hub_reference_is_refused_up_front(
    pod: Pod, alice: IdentityKey, bob: IdentityKey
) -> None:
    # The hub holds model source; a "declarative" reference to it would smuggle Python past the allow-list.
    model = ModelRef(style="declarative", name="spec", hub_ref="spec@1", sha256=source_sha256(SOURCE))
    for modeller in (alice, bob):
        refusal = pod.refusal(signed(make_task(modeller, model=model), modeller))
        assert refusal.code == RefusalCode.MALFORMED.value
        assert "carries its spec inline" in refusal.detail


@pytest.mark.parametrize("hp", [Hyperparameters(epochs=6), Hyperparameters(steps=101), Hyperparameters()],
                         ids=["epochs", "steps", "unbounded"])
def test_training_beyond_the_modellers_limits_is_refused(pod: Pod, bob: IdentityKey, hp: Hyperparameters) -> None:
    assert pod.refusal(signed(make_task(bob, hyperparameters=hp), bob)).code == RefusalCode.LIMITS_EXCEEDED.value


def test_training_at_the_modellers_limit_is_accepted(pod: Pod, bob: IdentityKey) -> None:
    pod.accept(signed(make_task(bob, hyperparameters=Hyperparameters(epochs=5)), bob))


def test_secure_aggregation_with_too_few_pods_is_refused(pod: Pod, alice: IdentityKey) -> None:
    assert pod.refusal(signed(make_task(alice, pods=[POD, "pod-b"]), alice)).code == RefusalCode.TOO_FEW_PODS.value


def test_secure_aggregation_with_enough_pods_is_accepted(make_pod: Callable[..., Pod], alice: IdentityKey) -> None:
    pod = make_pod(privacy=privacy(min_pods=4))
    pod.accept(signed(make_task(alice, pods=[POD, "pod-b", "pod-c", "pod-d"]), alice))


# -- hashes -------------------------------------------------------------------------------------


def test_source_not_matching_its_signed_hash_is_refused(pod: Pod, alice: IdentityKey) -> None:
    model = ModelRef(style="module", name="m", class_name="Net", source=SOURCE + "# edited after hashing\n",
                     sha256=source_sha256(SOURCE))
    refusal = pod.refusal(signed(make_task(alice, model=model), alice))
    assert refusal.code == RefusalCode.SOURCE_HASH_MISMATCH.value


def test_spec_not_matching_its_signed_hash_is_refused(pod: Pod, alice: IdentityKey) -> None:
    model = ModelRef(style="declarative", name="spec", spec=SPEC | {"loss": "MSE"}, sha256=spec_sha256(SPEC))
    assert pod.refusal(signed(make_task(alice, model=model), alice)).code == RefusalCode.SOURCE_HASH_MISMATCH.value


def test_source_hash_is_stable_across_unicode_normalisation(pod: Pod, alice: IdentityKey) -> None:
    nfd = "# caf\u0065\u0301\nclass Net: pass\n"
    model = ModelRef(style="module", name="m", class_name="Net", source=nfd, sha256=source_sha256(nfd))
    verified = pod.accept(signed(make_task(alice, model=model), alice))
    assert verified.payload.model is not None and verified.payload.model.source == "# caf\u00e9\nclass Net: pass\n"


def test_source_fetched_by_hub_ref_is_checked_against_the_signed_hash(pod: Pod, alice: IdentityKey) -> None:
    model = ModelRef(style="module", name="m", class_name="Net", hub_ref="m@1", sha256=source_sha256(SOURCE))
    verified = pod.accept(signed(make_task(alice, model=model), alice))
    assert verified.payload.model is not None
    check_fetched_source(verified.payload.model, SOURCE)
    with pytest.raises(Exception, match=r"source_hash_mismatch"):
        check_fetched_source(verified.payload.model, SOURCE + " ")


def test_task_built_for_another_schema_is_refused(pod: Pod, alice: IdentityKey) -> None:
    assert pod.refusal(signed(make_task(alice, schema_hash="ab" * 32), alice)).code == RefusalCode.SCHEMA_MISMATCH.value


def test_the_schema_hash_checked_is_this_pods_own_cohort_entry(pod: Pod, alice: IdentityKey) -> None:
    own = make_task(alice, schema_hash=SCHEMA)  # the other pods' entries pin their own hashes
    assert pod.accept(signed(own, alice)).payload.task_id == own.task_id
    wrong = make_task(alice, schema_hash="cd" * 32)
    refusal = pod.refusal(signed(wrong, alice))
    assert refusal.code == RefusalCode.SCHEMA_MISMATCH.value
    assert refusal.detail.startswith("task was built for schema cdcdcdcd")


# -- configuration ------------------------------------------------------------------------------


def test_policy_with_an_unreadable_public_key_is_a_config_error(alice: IdentityKey) -> None:
    security = SecuritySection(modellers=[ModellerPolicy(name="eve", public_key="not-a-key", role="super")])
    with pytest.raises(ConfigError, match=r"security\.modellers\[0\]\.public_key \('eve'\)"):
        verifier_for(security, privacy(), None)


def test_policy_listing_one_key_twice_is_a_config_error(alice: IdentityKey) -> None:
    key = alice.public.to_b64()
    security = SecuritySection(modellers=[ModellerPolicy(name="a", public_key=key, role="super"),
                                          ModellerPolicy(name="b", public_key=key, role="general")])
    with pytest.raises(ConfigError, match="same public key"):
        verifier_for(security, privacy(), None)

