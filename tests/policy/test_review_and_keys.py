"""The owner's review queue as the verifier sees it, and modellers that sign with several keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from policy_helpers import NOW, POD, SOURCE, Pod, cohort, make_task, policy_for, privacy, signed, verifier_for
from pydantic import ValidationError

from pod_agent.config.settings import DpBudget, DpSection, ModellerKey, ModellerPolicy
from pod_agent.errors import ConfigError
from pod_agent.policy import RefusalCode
from pod_agent.policy.budget import epsilon, gaussian_event
from pod_agent.protocol import IdentityKey, source_sha256
from pod_agent.protocol.messages import ModelRef
from pod_agent.state import PodState, TaskStatus
from pod_agent.state.records import REVIEW_EXPIRED, REVIEW_REJECTED

NEW_SOURCE = SOURCE + "\n# version 2\n"


def _new_model() -> ModelRef:
    return ModelRef(
        style="module", name="vetted", class_name="Net", source=NEW_SOURCE, sha256=source_sha256(NEW_SOURCE)
    )


def test_the_states_refusal_words_are_refusal_codes() -> None:
    assert {REVIEW_REJECTED, REVIEW_EXPIRED} <= {code.value for code in RefusalCode}


def test_under_review_an_unapproved_model_is_held_not_refused(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    pod = make_pod(policy_for(alice, bob, review=True))
    task = make_task(bob, model=_new_model())
    verified = pod.accept(signed(task, bob))
    assert verified.pending_review
    record = pod.state.get_task(task.task_id)
    assert record is not None and record.status is TaskStatus.PENDING_REVIEW
    review = pod.state.review(task.task_id)
    assert review is not None and review.model_text == NEW_SOURCE and review.decision is None


def test_an_allow_listed_model_is_not_held(make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey) -> None:
    pod = make_pod(policy_for(alice, bob, review=True))
    assert not pod.accept(signed(make_task(alice), alice)).pending_review  # "vetted" is in allowed_models


def test_an_approved_model_runs_at_once_for_that_modeller_only(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    pod = make_pod(policy_for(alice, bob, review=True))
    first = make_task(bob, model=_new_model())
    pod.accept(signed(first, bob))
    assert pod.state.decide_review(first.task_id, approve=True, by="carol", now=NOW) == [first.task_id]
    assert not pod.accept(signed(make_task(bob, model=_new_model()), bob)).pending_review
    assert pod.accept(signed(make_task(alice, model=_new_model()), alice)).pending_review


def test_without_review_a_state_approval_still_lets_a_general_modeller_run_it(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    reviewing = make_pod(policy_for(alice, bob, review=True))
    task = make_task(bob, model=_new_model())
    reviewing.accept(signed(task, bob))
    reviewing.state.decide_review(task.task_id, approve=True, by="carol", now=NOW)
    plain = Pod(verifier=verifier_for(policy_for(alice, bob), privacy(), reviewing.state), state=reviewing.state)
    assert not plain.accept(signed(make_task(bob, model=_new_model()), bob)).pending_review
    unlisted = make_pod(policy_for(alice, bob))
    assert unlisted.refusal(signed(make_task(bob, model=_new_model()), bob)).code == "role_not_permitted"


def _two_key_policy(
    alice: IdentityKey, bob: IdentityKey, old: IdentityKey, *, old_until: datetime
) -> list[ModellerPolicy]:
    security = policy_for(alice, bob)
    return [
        security.modellers[0],
        ModellerPolicy(name="bob", public_key=bob.public.to_b64(), role="general", max_epochs=5, max_steps=100,
                       keys=[ModellerKey(public_key=old.public.to_b64(), not_after=old_until)]),
    ]


def test_a_modeller_signs_with_either_key_until_the_old_one_expires(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    old = IdentityKey.generate()
    until = datetime.fromtimestamp(NOW + 600, UTC)
    pod = make_pod(policy_for(alice, bob, modellers=_two_key_policy(alice, bob, old, old_until=until)))
    assert pod.accept(signed(make_task(old), old), now=NOW).modeller.name == "bob"
    assert pod.accept(signed(make_task(bob), bob), now=NOW).modeller.name == "bob"
    late = NOW + 601
    refusal = pod.refusal(signed(make_task(old, issued_at=late - 10, expires_at=late + 600), old), now=late)
    assert refusal.code == "key_expired"
    assert "expired 1 s ago" in refusal.detail
    assert pod.accept(signed(make_task(bob, issued_at=late - 10, expires_at=late + 600), bob), now=late)


def test_a_key_listed_twice_is_a_config_error(alice: IdentityKey, bob: IdentityKey) -> None:
    twice = policy_for(alice, bob, modellers=[
        ModellerPolicy(name="bob", public_key=bob.public.to_b64(), role="general",
                       keys=[ModellerKey(public_key=bob.public.to_b64())]),
    ])
    with pytest.raises(ConfigError, match=r"security.modellers\[0\] \('bob'\) has the same public key as 'bob'"):
        verifier_for(twice, privacy(), None)


def test_a_not_after_without_an_offset_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs a UTC offset"):
        ModellerKey(public_key="x", not_after=datetime(2027, 1, 1))


def test_a_modellers_keys_share_one_dp_budget(tmp_path: Path, alice: IdentityKey, bob: IdentityKey) -> None:
    second = IdentityKey.generate()
    budgeted = policy_for(alice, bob).modellers[0].model_copy(update={
        "dp": DpBudget(epsilon=3.0, delta=1e-5), "keys": [ModellerKey(public_key=second.public.to_b64())],
    })
    dp_privacy = privacy(max_clip_norm=1.0, dp=DpSection(min_noise_multiplier=2.0))
    state = PodState.open(tmp_path / "dp.sqlite")
    pod = Pod(verifier_for(policy_for(alice, bob, modellers=[budgeted]), dp_privacy, state), state)

    def train(key: IdentityKey) -> bytes:
        return signed(make_task(key, secagg=cohort([POD, "pod-b", "pod-c"], clip_norm=1.0)), key)

    fits = max(n for n in range(1, 50) if epsilon([gaussian_event(2.0)] * n, 1e-5) <= 3.0)
    for n in range(fits):
        pod.accept(train(alice if n % 2 else second))
    assert pod.refusal(train(second)).code == "privacy_budget_exhausted"
    assert pod.refusal(train(alice)).code == "privacy_budget_exhausted"
    state.close()
