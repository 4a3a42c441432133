"""A pod holds only its own entry of a task's cohort: the hub's proof of it is checked against the signed
root and size, and the owner's floor counts the cohort from the signed size (hostile deliveries)."""

from __future__ import annotations

from policy_helpers import POD, Pod, cohort, cohort_of, make_task, proof_for, signed

from pod_agent.policy import RefusalCode
from pod_agent.protocol import IdentityKey


def test_a_forged_proof_is_refused(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice), alice)
    honest = proof_for(raw)
    forged = honest.model_copy(update={"path": ["00" * 32, *honest.path[1:]]})
    refusal = pod.refusal(raw, proof=forged)
    assert refusal.code == RefusalCode.BAD_COHORT_PROOF.value
    assert f"cohort proof for pod {POD!r} does not lead to the task's signed cohort root" in refusal.detail


def test_another_pods_entry_is_refused_as_not_targeted(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice), alice)
    refusal = pod.refusal(raw, proof=proof_for(raw, "pod-b"))  # a valid proof, of pod-b's entry
    assert refusal.code == RefusalCode.NOT_TARGETED.value
    assert "with the cohort entry of pod 'pod-b', not of 'pod-a'" in refusal.detail


def test_an_entry_with_this_pods_name_the_modeller_did_not_sign_is_refused(pod: Pod, alice: IdentityKey) -> None:
    """The hub makes up an entry for this pod (another schema hash, another key) with a path of its own."""
    raw = signed(make_task(alice, pods=["pod-b", "pod-c", "pod-d"]), alice)
    made_up = cohort_of([POD, "pod-b", "pod-c"]).proof(POD)
    refusal = pod.refusal(raw, proof=made_up)
    assert refusal.code == RefusalCode.BAD_COHORT_PROOF.value


def test_a_proof_from_another_tasks_cohort_does_not_match_the_signed_root(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice), alice)
    other = proof_for(signed(make_task(alice, pods=[POD, "pod-b", "pod-d"]), alice))
    refusal = pod.refusal(raw, proof=other)
    assert refusal.code == RefusalCode.BAD_COHORT_PROOF.value
    assert "does not lead to the task's signed cohort root" in refusal.detail


def test_an_index_outside_the_signed_size_is_refused(pod: Pod, alice: IdentityKey) -> None:
    raw = signed(make_task(alice), alice)
    beyond = proof_for(raw).model_copy(update={"index": 3})
    refusal = pod.refusal(raw, proof=beyond)
    assert refusal.code == RefusalCode.BAD_COHORT_PROOF.value
    assert "outside the signed cohort of 3" in refusal.detail


def test_a_signed_cohort_under_the_owners_min_pods_is_refused(pod: Pod, alice: IdentityKey) -> None:
    """The floor (min_pods 3 by default) counts the signed size, though the pod sees one entry."""
    pods = [POD, "pod-b"]
    refusal = pod.refusal(signed(make_task(alice, pods=pods, secagg=cohort(pods)), alice))
    assert refusal.code == RefusalCode.TOO_FEW_PODS.value
    assert refusal.detail == "secure aggregation over a signed cohort of 2 pods, under min_pods 3"


def test_a_signed_cohort_over_num_workers_is_refused(pod: Pod, alice: IdentityKey) -> None:
    pods = [POD, "pod-b", "pod-c", "pod-d"]
    refusal = pod.refusal(signed(make_task(alice, pods=pods, secagg=cohort(pods, num_workers=3)), alice))
    assert refusal.code == RefusalCode.CLIP_TOO_LOOSE.value
    assert "a signed cohort of 4 pods but param_clipping num_workers 3" in refusal.detail


def test_a_refused_proof_burns_the_task(pod: Pod, alice: IdentityKey) -> None:
    """Recorded like any refusal after the signature: the same task with an honest proof is then a replay."""
    raw = signed(make_task(alice), alice)
    assert pod.refusal(raw, proof=proof_for(raw, "pod-b")).code == RefusalCode.NOT_TARGETED.value
    assert pod.refusal(raw).code == RefusalCode.REPLAY.value
