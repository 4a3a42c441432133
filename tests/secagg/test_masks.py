from __future__ import annotations

import numpy as np
import pytest
from secagg_cohort import TASK_A, TASK_B, Cohort, make_cohort

from pod_agent.errors import SecAggError
from pod_agent.protocol import IdentityKey, open_envelope, sign_envelope
from pod_agent.protocol.messages import RoundKeyAnnouncement
from pod_agent.secagg import (
    RoundKeyPair,
    add_pairwise_masks,
    dropout_correction,
    participant_from,
    protect_update,
    round_key_announcement,
)
from pod_agent.secagg.masks import Cohort as MaskCohort
from pod_agent.secagg.masks import pair_key

# chi-square critical value for 255 degrees of freedom at p = 0.001
CHI2_255_P001 = 330.5


def _chi_square_256(values: np.ndarray) -> float:
    counts = np.bincount(values.astype(np.int64), minlength=256)
    expected = values.size / 256
    return float(np.sum((counts - expected) ** 2) / expected)


def _masked_zeros(cohort: Cohort, me: str, *, bits: int = 64, size: int = 1 << 17, task_id: str = TASK_A,
                  round_index: int = 0) -> np.ndarray:
    vector = np.zeros(size, dtype=np.uint64 if bits == 64 else np.uint32)
    add_pairwise_masks(vector, me=me, my_round_key=cohort.keys[me], participants=cohort.participants(),
                       task_id=task_id, round_index=round_index)
    return vector


def test_repr_shows_only_the_public_key() -> None:
    key = RoundKeyPair.generate()
    assert key.public_b64 in repr(key)
    assert key.private_bytes().hex() not in repr(key) + str(key)


def test_private_bytes_restore_the_same_pair() -> None:
    key = RoundKeyPair.generate()
    assert RoundKeyPair.from_private_bytes(key.private_bytes()).public_b64 == key.public_b64


def test_both_pods_of_a_pair_derive_the_same_key_and_it_depends_on_task_and_round() -> None:
    a, b = RoundKeyPair.generate(), RoundKeyPair.generate()
    digest = b"d" * 32
    ab = pair_key(a.shared_secret(b.public_b64), task_id=TASK_A, round_index=0, cohort_digest=digest,
                  pod_a="a", pod_b="b")
    ba = pair_key(b.shared_secret(a.public_b64), task_id=TASK_A, round_index=0, cohort_digest=digest,
                  pod_a="b", pod_b="a")
    other_task = pair_key(a.shared_secret(b.public_b64), task_id=TASK_B, round_index=0, cohort_digest=digest,
                          pod_a="a", pod_b="b")
    other_round = pair_key(a.shared_secret(b.public_b64), task_id=TASK_A, round_index=1, cohort_digest=digest,
                           pod_a="a", pod_b="b")
    assert ab == ba
    assert len({ab, other_task, other_round}) == 3


@pytest.mark.parametrize("bits", [32, 64])
def test_masks_of_the_whole_cohort_cancel(bits: int) -> None:
    cohort = make_cohort(5)
    total = sum((_masked_zeros(cohort, name, bits=bits, size=10_001) for name in cohort.names),
                start=np.zeros(10_001, dtype=np.uint64 if bits == 64 else np.uint32))
    assert not total.any()


def test_single_masked_vector_of_a_constant_update_looks_uniform() -> None:
    cohort = make_cohort(3)
    params = cohort.params()
    update = {"w": np.zeros(1 << 17, dtype=np.float32)}
    vector = protect_update(update, params=params, task_id=TASK_A, me="pod-01", my_round_key=cohort.keys["pod-01"],
                            n_rows=7).vector
    assert _chi_square_256(vector.view(np.uint8)) < CHI2_255_P001
    assert _chi_square_256(vector >> np.uint64(56)) < CHI2_255_P001
    assert _chi_square_256(vector & np.uint64(0xFF)) < CHI2_255_P001


def test_uniformity_check_rejects_an_unmasked_sum() -> None:
    cohort = make_cohort(3)
    params = cohort.params()
    rng = np.random.default_rng(1)
    updates = {name: {"w": rng.normal(size=1 << 15).astype(np.float32)} for name in cohort.names}
    protected = cohort.protect_all(updates, params)
    total = sum((p.vector for p in protected.values()), start=np.zeros(protected["pod-00"].vector.size, np.uint64))
    assert _chi_square_256(total.view(np.uint8)) > 10 * CHI2_255_P001


@pytest.mark.parametrize("bits", [32, 64])
def test_same_update_in_two_tasks_differs_in_every_element(bits: int) -> None:
    cohort = make_cohort(3)
    params = cohort.params(modulus_bits=bits, prime_q=2**30 if bits == 32 else 2**40)
    update = {"w": np.linspace(-1, 1, 1 << 16, dtype=np.float32)}
    first, second = (
        protect_update(update, params=params, task_id=task, me="pod-00", my_round_key=cohort.keys["pod-00"],
                       n_rows=1).vector
        for task in (TASK_A, TASK_B)
    )
    equal = int(np.count_nonzero(first == second))
    # uint32 elements collide by chance with probability 2**-32 each; uint64 never in practice
    assert equal == 0 if bits == 64 else equal <= 2


def test_a_changed_cohort_gives_fresh_masks() -> None:
    four = make_cohort(4)
    three = Cohort(four.names[:3], four.keys)
    assert not np.any(_masked_zeros(four, "pod-00", size=4096) == _masked_zeros(three, "pod-00", size=4096))


def test_pod_missing_from_participants_is_refused(cohort3: Cohort) -> None:
    with pytest.raises(SecAggError, match="pod 'pod-99' is not in the round's participants"):
        add_pairwise_masks(np.zeros(4, np.uint64), me="pod-99", my_round_key=RoundKeyPair.generate(),
                           participants=cohort3.participants(), task_id=TASK_A, round_index=0)


def test_task_listing_another_round_key_for_me_is_refused(cohort3: Cohort) -> None:
    with pytest.raises(SecAggError, match="re-announce the round key"):
        add_pairwise_masks(np.zeros(4, np.uint64), me="pod-00", my_round_key=RoundKeyPair.generate(),
                           participants=cohort3.participants(), task_id=TASK_A, round_index=0)


def test_duplicate_pod_in_participants_is_refused(cohort3: Cohort) -> None:
    participants = cohort3.participants()
    with pytest.raises(SecAggError, match="names a pod twice"):
        MaskCohort.of([*participants, participants[0]])


def test_reused_round_key_across_pods_is_refused(cohort3: Cohort) -> None:
    first, second, third = cohort3.participants()
    clone = second.model_copy(update={"round_public_key": first.round_public_key})
    with pytest.raises(SecAggError, match="same round key"):
        MaskCohort.of([first, clone, third])


@pytest.mark.parametrize("bad", ["not base64!", "AAAA"])
def test_malformed_peer_key_is_refused(cohort3: Cohort, bad: str) -> None:
    first, second, third = cohort3.participants()
    broken = second.model_copy(update={"round_public_key": bad})
    with pytest.raises(SecAggError, match="round public key"):
        add_pairwise_masks(np.zeros(4, np.uint64), me=first.pod, my_round_key=cohort3.keys[first.pod],
                           participants=[first, broken, third], task_id=TASK_A, round_index=0)


def test_low_order_peer_key_is_refused(cohort3: Cohort) -> None:
    first, second, third = cohort3.participants()
    zero_point = second.model_copy(update={"round_public_key": "A" * 43 + "="})
    with pytest.raises(SecAggError, match="low-order point"):
        add_pairwise_masks(np.zeros(4, np.uint64), me=first.pod, my_round_key=cohort3.keys[first.pod],
                           participants=[first, zero_point, third], task_id=TASK_A, round_index=0)


def test_dropout_correction_restores_the_survivors_sum() -> None:
    cohort = make_cohort(4)
    survivors = cohort.names[:2] + cohort.names[3:]
    dropped = cohort.names[2]
    total = sum((_masked_zeros(cohort, name, size=5000) for name in survivors), start=np.zeros(5000, np.uint64))
    assert total.any()
    correction = dropout_correction(5000, dropped=dropped, dropped_round_key=cohort.keys[dropped],
                                    participants=cohort.participants(), survivors=survivors, task_id=TASK_A,
                                    round_index=0, modulus_bits=64)
    assert not (total + correction).any()


def test_announcement_signed_by_identity_key_yields_the_participant() -> None:
    identity = IdentityKey.generate()
    round_key = RoundKeyPair.generate()
    announcement = round_key_announcement(pod="pod-a", key_id=identity.key_id, round_key=round_key,
                                          issued_at=1_700_000_000)
    opened = open_envelope(sign_envelope(announcement, identity), RoundKeyAnnouncement, identity.public)
    participant = participant_from(opened)
    assert (participant.pod, participant.key_id, participant.round_public_key) == (
        "pod-a", identity.key_id, round_key.public_b64)
