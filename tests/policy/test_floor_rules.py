"""The owner's privacy floor: each rule refuses with its own code, per-modeller overrides
replace the defaults, and no task the verifier accepts breaks the floor (property test)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import (
    NOW,
    POD,
    ROW_COUNT,
    Pod,
    cohort,
    make_task,
    policy_for,
    privacy,
    proof_for,
    signed,
    verifier_for,
)

from pod_agent.config.settings import ModellerPolicy, PrivacyFloorOverride, PrivacySection
from pod_agent.errors import TaskRefused
from pod_agent.policy import PrivacyFloor, RefusalCode
from pod_agent.protocol import IdentityKey
from pod_agent.protocol.messages import DataSelection, Hyperparameters, Split
from pod_agent.state import Verdict


def _code(pod: Pod, key: IdentityKey, **task: Any) -> str:
    return pod.refusal(signed(make_task(key, **task), key)).code


def test_plain_train_task_is_refused_when_secure_aggregation_is_required(pod: Pod, alice: IdentityKey) -> None:
    assert _code(pod, alice, secagg=None) == RefusalCode.SECURE_AGGREGATION_REQUIRED.value


def test_plain_train_task_passes_where_the_owner_lifted_the_requirement(
    make_pod: Callable[..., Pod], alice: IdentityKey
) -> None:
    pod = make_pod(privacy=privacy(require_secure_aggregation=False))
    pod.accept(signed(make_task(alice, secagg=None), alice))


def test_train_task_without_pinned_weights_is_refused(pod: Pod, alice: IdentityKey) -> None:
    assert _code(pod, alice, weights=None) == RefusalCode.WEIGHTS_NOT_PINNED.value


def test_batch_of_one_is_refused(pod: Pod, alice: IdentityKey) -> None:
    refusal = pod.refusal(signed(make_task(alice, hyperparameters=Hyperparameters(epochs=1, batch_size=1)), alice))
    assert refusal.code == RefusalCode.BATCH_TOO_SMALL.value
    assert "under min_batch_size 32" in refusal.detail


def test_half_precision_updates_are_refused_unless_the_owner_allows_them(
    make_pod: Callable[..., Pod], alice: IdentityKey
) -> None:
    half = Hyperparameters(epochs=1, batch_size=32, wire_dtype="bfloat16")
    refusal = make_pod().refusal(signed(make_task(alice, hyperparameters=half), alice))
    assert refusal.code == RefusalCode.LIMITS_EXCEEDED.value
    assert "asks for bfloat16 updates; this pod sends float32 only (privacy.allow_half_precision)" in refusal.detail
    make_pod(privacy=privacy(allow_half_precision=True)).accept(signed(make_task(alice, hyperparameters=half), alice))


@pytest.mark.parametrize("kind", ["train", "evaluate", "predict"])
def test_a_split_of_a_few_rows_is_refused_for_every_kind(
    make_pod: Callable[..., Pod], alice: IdentityKey, kind: str
) -> None:
    tiny_test = DataSelection(target="income", split=Split(train=99, validation=0, test=1))
    make_pod(row_count=10_000).accept(
        signed(make_task(alice, kind=kind, data=tiny_test), alice)
    )  # 100 rows: at the floor
    refusal = make_pod(row_count=9_999).refusal(signed(make_task(alice, kind=kind, data=tiny_test), alice))
    assert refusal.code == RefusalCode.SPLIT_TOO_SMALL.value
    assert "'test' would hold about 99 rows, under min_rows 100" in refusal.detail


def test_more_effective_steps_than_the_floor_allows_are_refused(
    make_pod: Callable[..., Pod], alice: IdentityKey
) -> None:
    # 8000 train rows / batch 32 = 250 steps an epoch: 20 epochs is the default ceiling of 5000.
    at_ceiling = Hyperparameters(epochs=20, batch_size=32)
    make_pod().accept(signed(make_task(alice, hyperparameters=at_ceiling), alice))
    # 8032 train rows: 251 steps an epoch, 5020 in all.
    refusal = make_pod(row_count=10_040).refusal(signed(make_task(alice, hyperparameters=at_ceiling), alice))
    assert refusal.code == RefusalCode.TOO_MANY_STEPS.value
    assert "about 5020 optimiser steps" in refusal.detail


def test_clip_bound_above_the_owners_ceiling_is_refused(pod: Pod, alice: IdentityKey) -> None:
    pods = [POD, "pod-b", "pod-c"]
    loose = cohort(pods, prime_q=2**41)  # B = 2**41 / (2 * 2**16 * 3), about 5.6e6
    refusal = pod.refusal(signed(make_task(alice, secagg=loose), alice))
    assert refusal.code == RefusalCode.CLIP_TOO_LOOSE.value
    assert "over max_clip_bound 4.0" in refusal.detail


def test_missing_or_loose_clip_norm_is_refused_under_a_norm_ceiling(
    make_pod: Callable[..., Pod], alice: IdentityKey
) -> None:
    pod = make_pod(privacy=privacy(max_clip_norm=5.0))
    pods = [POD, "pod-b", "pod-c"]
    assert _code(pod, alice) == RefusalCode.CLIP_TOO_LOOSE.value
    assert _code(pod, alice, secagg=cohort(pods, clip_norm=6.0)) == RefusalCode.CLIP_TOO_LOOSE.value
    pod.accept(signed(make_task(alice, secagg=cohort(pods, clip_norm=5.0)), alice))


def test_a_modellers_own_floor_replaces_the_default(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    strict_bob = ModellerPolicy(name="bob", public_key=bob.public.to_b64(), role="super",
                                privacy=PrivacyFloorOverride(min_pods=4, min_batch_size=128))
    relaxed_alice = ModellerPolicy(name="alice", public_key=alice.public.to_b64(), role="super",
                                   privacy=PrivacyFloorOverride(require_secure_aggregation=False))
    pod = make_pod(security=policy_for(alice, bob, modellers=[relaxed_alice, strict_bob]))
    assert _code(pod, bob) == RefusalCode.BATCH_TOO_SMALL.value
    big_batch = Hyperparameters(epochs=1, batch_size=128)
    assert _code(pod, bob, hyperparameters=big_batch) == RefusalCode.TOO_FEW_PODS.value
    pod.accept(signed(make_task(bob, hyperparameters=big_batch, pods=[POD, "pod-b", "pod-c", "pod-d"]), bob))
    pod.accept(signed(make_task(alice, secagg=None), alice))


def test_floor_for_a_modeller_lays_its_keys_over_the_defaults() -> None:
    modeller = ModellerPolicy(name="m", public_key="x", role="general", privacy=PrivacyFloorOverride(metric_digits=2))
    floor = PrivacyFloor.for_modeller(PrivacySection(min_rows=500), modeller)
    assert (floor.metric_digits, floor.min_rows, floor.min_batch_size) == (2, 500, 32)
    assert "min_rows=500" in floor.describe()


# -- property: whatever is accepted keeps the floor -------------------------------------------------------


ALICE, BOB = IdentityKey.generate(), IdentityKey.generate()
PEERS = ["pod-b", "pod-c", "pod-d", "sybil"]


class _ForgetfulNonces:
    def ensure_unseen(self, *, task_id: str, nonce: str) -> None:
        return None

    def record_verdict(self, verdict: Verdict, reservation: object = None) -> None:
        return None


FLOOR = privacy(min_pods=3, min_batch_size=32, min_rows=100, max_effective_steps=600, max_clip_bound=2.0)
VERIFIER = verifier_for(policy_for(ALICE, BOB), FLOOR, _ForgetfulNonces())


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["train", "evaluate", "predict"]),
    others=st.lists(st.sampled_from(PEERS), unique=True, max_size=4),
    secure=st.booleans(),
    pinned=st.booleans(),
    batch=st.integers(1, 512),
    epochs=st.integers(1, 6),
    split=st.tuples(st.integers(0, 100), st.integers(0, 100)).filter(lambda t: t[0] + t[1] <= 100),
    bound=st.floats(0.01, 10.0),
    workers_extra=st.integers(0, 2),
)
def test_no_accepted_task_breaks_the_floor(
    kind: str, others: list[str], secure: bool, pinned: bool, batch: int, epochs: int,
    split: tuple[int, int], bound: float, workers_extra: int,
) -> None:
    pods = [POD, *others]
    n = len(pods) + workers_extra
    params = cohort(pods, num_workers=n, prime_q=max(1, math.floor(bound * 2 * 2**16 * n))) if secure else None
    selection = DataSelection(target="income", split=Split(train=split[0], validation=split[1],
                                                           test=100 - split[0] - split[1]))
    task = make_task(ALICE, kind=kind, pods=pods, secagg=params, data=selection,
                     weights=None if not pinned else make_task(ALICE).weights,
                     hyperparameters=Hyperparameters(epochs=epochs, batch_size=batch))
    raw = signed(task, ALICE)
    try:
        VERIFIER.verify(raw, proof=proof_for(raw), now=NOW)
    except TaskRefused as refusal:
        assert refusal.code in {c.value for c in RefusalCode}
        return
    rows = {name: ROW_COUNT * getattr(selection.split, name) // 100 for name in ("train", "validation", "test")}
    assert all(rows[name] >= 100 for name in rows if getattr(selection.split, name) > 0)
    if kind == "train":
        assert params is not None and pinned and batch >= 32
        assert epochs * math.ceil(rows["train"] / batch) <= 600
        assert params.prime_q / (2 * params.precision * params.num_workers) <= 2.0
        assert len(pods) >= 3
    if params is not None:
        # A sybil in the cohort is the round's to refuse: its advert's cohort entry names no pinned peer.
        assert len(pods) >= 3 and len(pods) <= params.num_workers
