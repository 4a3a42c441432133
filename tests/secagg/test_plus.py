"""SecAgg+ rounds simulated in one process: dropouts at every stage, refusals, what leaks."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_cohort import (
    CHI2_255_P001,
    TASK_A,
    TASK_B,
    SimulatedRound,
    assert_within,
    chi_square_256,
    make_params,
    names,
    plain_mean,
    run_round,
)

from pod_agent.errors import SecAggError
from pod_agent.secagg import (
    HeldShares,
    Layout,
    PeerKeys,
    RoundSecrets,
    Share,
    UnmaskAnswer,
    decrypt_shares,
    encode_update,
    mask_input,
    sum_vectors,
    unmask_answer,
    unmask_sum,
)


def _updates(pods: list[str], seed: int, size: int = 300) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {p: {"w": rng.normal(size=(size // 3, 3)).astype(np.float32), "b": rng.uniform(-2, 2, size=5)}
            for p in pods}


def _spread_on_ring(n: int, count: int) -> list[str]:
    """``count`` pods evenly spaced on the round's ring: every neighbourhood keeps a majority."""
    ring = SimulatedRound(names(n)).graph.ring
    return [ring[i * n // count] for i in range(count)]


# (n, never advertised, advertised but never shared, shared but never masked): n - t gone at most.
_COMPLETE_CASES = [
    (3, [], [], []),
    (3, ["pod-02"], [], []),
    (3, [], ["pod-01"], []),
    (3, [], [], ["pod-00"]),
    (5, ["pod-03"], [], ["pod-01"]),
    (5, [], [], ["pod-00", "pod-04"]),
    (5, [], ["pod-02", "pod-03"], []),
    (12, ["pod-00", "pod-11"], ["pod-05"], ["pod-06", "pod-07"]),
]


@pytest.mark.parametrize(("n", "not_advertised", "not_committed", "not_masked"), _COMPLETE_CASES)
def test_round_with_dropouts_at_every_stage_gives_the_survivors_weighted_mean(
    n: int, not_advertised: list[str], not_committed: list[str], not_masked: list[str]
) -> None:
    pods = names(n)
    params = make_params(n)
    updates = _updates(pods, seed=n)
    rows = {p: 50 + 13 * i for i, p in enumerate(pods)}
    result = run_round(updates, params, rows=rows, not_advertised=not_advertised, not_committed=not_committed,
                       not_masked=not_masked)
    survivors = [p for p in pods if p not in {*not_advertised, *not_committed, *not_masked}]
    assert result.n_pods == len(survivors)
    assert result.total_rows == sum(rows[p] for p in survivors)
    expected = plain_mean({p: updates[p] for p in survivors}, rows)
    assert_within(result.mean, expected, len(survivors) / params.precision + 1e-6)


def test_sparse_round_of_40_with_a_fifth_gone_gives_the_survivors_mean() -> None:
    pods = names(40)
    gone = _spread_on_ring(40, 8)
    params = make_params(40, weighted=False)
    updates = _updates(pods, seed=40)
    result = run_round(updates, params, not_advertised=gone[:3], not_committed=gone[3:5], not_masked=gone[5:])
    survivors = [p for p in pods if p not in gone]
    assert result.n_pods == 32
    assert_within(result.mean, plain_mean({p: updates[p] for p in survivors}), 32 / params.precision + 1e-6)


@pytest.mark.parametrize(("gap", "ok"), [(8, True), (9, False)])
def test_sparse_round_survives_a_gap_of_k_over_2_ring_neighbours_and_no_more(gap: int, ok: bool) -> None:
    # k = 16, t = 9: in a gap of 8, a dropped pod keeps 16 - 7 = 9 surviving holders of its mask key;
    # in a gap of 9 the second one keeps 8, too few to rebuild it.
    pods = names(40)
    ring = SimulatedRound(pods).graph.ring
    gone = list(ring[5 : 5 + gap])
    params = make_params(40, weighted=False)
    updates = _updates(pods, seed=gap, size=30)
    if not ok:
        with pytest.raises(SecAggError, match="too few shares arrived to unmask .* mask-key 8 of 9"):
            run_round(updates, params, not_masked=gone)
        return
    result = run_round(updates, params, not_masked=gone)
    survivors = [p for p in pods if p not in gone]
    assert_within(result.mean, plain_mean({p: updates[p] for p in survivors}), 32 / params.precision + 1e-6)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 12), data=st.data())
def test_a_complete_round_survives_any_n_minus_t_dropouts_at_any_stage(n: int, data: st.DataObject) -> None:
    pods = names(n)
    threshold = n // 2 + 1
    gone = data.draw(st.lists(st.sampled_from(pods), unique=True, max_size=n - threshold + 1))
    stage = {pod: data.draw(st.sampled_from(["advert", "shares", "masked"])) for pod in gone}
    params = make_params(n, weighted=False)
    updates = _updates(pods, seed=n, size=9)
    dropouts = {kind: [p for p in gone if stage[p] == kind] for kind in ("advert", "shares", "masked")}
    if len(gone) > n - threshold:
        with pytest.raises(SecAggError, match="only"):
            run_round(updates, params, not_advertised=dropouts["advert"], not_committed=dropouts["shares"],
                      not_masked=dropouts["masked"])
        return
    result = run_round(updates, params, not_advertised=dropouts["advert"], not_committed=dropouts["shares"],
                       not_masked=dropouts["masked"])
    survivors = [p for p in pods if p not in gone]
    assert_within(result.mean, plain_mean({p: updates[p] for p in survivors}),
                  len(survivors) / params.precision + 1e-6)


@pytest.mark.parametrize("bits", [32, 64])
def test_round_in_either_modulus_gives_the_mean(bits: int) -> None:
    pods = names(5)
    params = make_params(5, modulus_bits=bits, prime_q=2**30, precision=2**12, weighted=False)
    updates = _updates(pods, seed=bits)
    result = run_round(updates, params, not_masked=["pod-02"])
    survivors = [p for p in pods if p != "pod-02"]
    assert_within(result.mean, plain_mean({p: updates[p] for p in survivors}), 4 / 2**12 + 1e-6)


def test_one_more_dropout_than_the_threshold_allows_is_refused_at_unmask() -> None:
    pods = names(5)
    with pytest.raises(SecAggError, match=r"only 2 of 'pod-0\d' and its 4 neighbours survive; unmasking needs at "
                                          r"least 3"):
        run_round(_updates(pods, seed=1), make_params(5), not_masked=pods[2:])


def test_too_few_committed_neighbours_are_refused_before_masking() -> None:
    pods = names(5)
    with pytest.raises(
        SecAggError, match=r"only 1 of the 4 neighbours of 'pod-0\d' committed; the round needs at least 2"
    ):
        run_round(_updates(pods, seed=1), make_params(5), not_advertised=pods[:3])


def test_cohort_metrics_are_row_weighted_means_of_the_survivors_that_had_them() -> None:
    pods = names(6)
    params = make_params(6)
    rows = {p: 10 * (i + 1) for i, p in enumerate(pods)}
    metrics = {p: {"accuracy": 0.5 + i / 20, "loss": 1.0 + i} for i, p in enumerate(pods)}
    del metrics["pod-01"]["loss"]
    metrics["pod-02"]["loss"] = float("nan")
    metrics["pod-03"]["unlisted"] = 3.0
    result = run_round(_updates(pods, seed=2), params, rows=rows, metrics=metrics,
                       metric_names=["accuracy", "loss", "f1"], not_masked=["pod-05"])
    survivors = pods[:5]
    with_loss = [p for p in survivors if p not in ("pod-01", "pod-02")]
    expected_accuracy = sum(metrics[p]["accuracy"] * rows[p] for p in survivors) / sum(rows[p] for p in survivors)
    expected_loss = sum(metrics[p]["loss"] * rows[p] for p in with_loss) / sum(rows[p] for p in with_loss)
    assert set(result.metrics) == {"accuracy", "loss"}
    assert result.metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1 / 2**10)
    assert result.metrics["loss"] == pytest.approx(expected_loss, abs=1 / 2**10)


def _shared_round(n: int = 5) -> SimulatedRound:
    sim = SimulatedRound(names(n))
    sim.advertise(sim.members)
    sim.share(sim.members)
    return sim


def test_a_masked_vector_looks_uniform_and_the_unmasked_sum_does_not() -> None:
    sim = _shared_round(3)
    params = make_params(3)
    zeros = encode_update({"w": np.zeros(1 << 16, np.float32)}, params=params, n_rows=7)
    masked = sim.mask(zeros, "pod-01")
    assert chi_square_256(masked.view(np.uint8)) < CHI2_255_P001
    assert chi_square_256(masked >> np.uint64(56)) < CHI2_255_P001
    sim = _shared_round(3)
    rng = np.random.default_rng(1)
    encoded = {p: encode_update({"w": rng.normal(size=1 << 16).astype(np.float32)}, params=params, n_rows=1)
               for p in sim.members}
    vectors = {p: sim.mask(encoded[p], p) for p in sim.members}
    unmasked = sim.unmask(vectors, params, encoded["pod-00"].layout, sim.answers(sim.members))
    assert chi_square_256(unmasked.view(np.uint8)) > 10 * CHI2_255_P001


def test_no_answer_reveals_a_survivors_mask_key_or_a_dropped_pods_self_mask() -> None:
    sim = _shared_round(12)
    survivors = [p for p in sim.members if p not in ("pod-03", "pod-08")]
    answers = sim.answers(survivors)
    for answer in answers.values():
        assert set(answer.self_mask_shares) <= set(survivors)
        assert set(answer.mask_key_shares) <= {"pod-03", "pod-08"}
    assert sum(len(a.mask_key_shares) for a in answers.values()) == 2 * len(survivors)


def test_a_tampered_ciphertext_is_refused_naming_its_sender() -> None:
    sim = _shared_round()
    box = bytearray(sim.boxes["pod-01"]["pod-02"])
    box[20] ^= 1
    with pytest.raises(SecAggError, match="the shares from pod 'pod-01' do not open: altered in transit"):
        _decrypt(sim, "pod-02", {"pod-01": bytes(box)})


def test_a_ciphertext_for_another_receiver_task_or_round_does_not_open() -> None:
    sim = _shared_round()
    with pytest.raises(SecAggError, match="from pod 'pod-01' do not open"):
        _decrypt(sim, "pod-02", {"pod-01": sim.boxes["pod-01"]["pod-03"]})
    for task_id, round_index in ((TASK_B, 0), (TASK_A, 1)):
        with pytest.raises(SecAggError, match="from pod 'pod-01' do not open"):
            _decrypt(sim, "pod-02", {"pod-01": sim.boxes["pod-01"]["pod-02"]}, task_id=task_id,
                     round_index=round_index)


def test_shares_from_a_pod_that_is_no_neighbour_are_refused() -> None:
    sim = _shared_round(40)
    stranger = next(p for p in sim.members if p not in sim.graph.neighbours("pod-00") and p != "pod-00")
    with pytest.raises(SecAggError, match=f"shares arrived from pod '{stranger}', which is not a neighbour"):
        _decrypt(sim, "pod-00", {stranger: bytes(80)})


def test_a_ciphertext_of_the_wrong_length_is_refused() -> None:
    sim = _shared_round()
    with pytest.raises(SecAggError, match="the shares from pod 'pod-01' are 79 bytes; expected 92"):
        _decrypt(sim, "pod-02", {"pod-01": bytes(79)})


def _decrypt(sim: SimulatedRound, me: str, ciphertexts: dict[str, bytes], *, task_id: str = TASK_A,
             round_index: int = 0) -> dict[str, HeldShares]:
    return decrypt_shares(sim.secrets[me], me=me, graph=sim.graph, peers=sim.peers, ciphertexts=ciphertexts,
                          task_id=task_id, round_index=round_index)


def test_encrypting_again_resends_the_same_shares() -> None:
    # A retry re-encrypts (fresh nonces); every receiver must still hold shares of one polynomial.
    sim = _shared_round()
    first_boxes, first_held = dict(sim.boxes), {p: dict(sim.held[p]) for p in sim.members}
    sim.share(sim.members)
    assert sim.boxes["pod-00"]["pod-01"] != first_boxes["pod-00"]["pod-01"]
    assert all(first_held[p] == sim.held[p] for p in sim.members)


def test_the_relay_cannot_swap_in_keys_under_this_pods_name() -> None:
    sim = _shared_round()
    other = RoundSecrets.generate()
    peers = {**sim.peers, "pod-00": PeerKeys("pod-00", other.c_public_b64, other.s_public_b64)}
    with pytest.raises(SecAggError, match="the advertised keys of 'pod-00' are not this pod's round keys"):
        mask_input(np.zeros(4, np.uint64), sim.secrets["pod-00"], me="pod-00", graph=sim.graph, peers=peers,
                   committed=sim.members, task_id=TASK_A, round_index=0)


def test_keys_filed_under_another_name_are_refused() -> None:
    sim = _shared_round()
    peers = {**sim.peers, "pod-01": dataclasses.replace(sim.peers["pod-02"])}
    with pytest.raises(SecAggError, match="the keys filed under pod 'pod-01' were advertised by 'pod-02'"):
        mask_input(np.zeros(4, np.uint64), sim.secrets["pod-00"], me="pod-00", graph=sim.graph, peers=peers,
                   committed=sim.members, task_id=TASK_A, round_index=0)


def test_a_pod_masks_only_once_per_round_secrets() -> None:
    sim = _shared_round()
    sim.mask(encode_update({"w": np.ones(3)}, params=make_params(5), n_rows=1), "pod-00")
    with pytest.raises(SecAggError, match="already masked an input; each round masks one input, once"):
        sim.mask(encode_update({"w": np.zeros(3)}, params=make_params(5), n_rows=1), "pod-00")


def test_a_pod_that_did_not_commit_cannot_mask() -> None:
    sim = _shared_round()
    with pytest.raises(SecAggError, match="pod 'pod-00' is not in the committed list"):
        mask_input(np.zeros(4, np.uint64), sim.secrets["pod-00"], me="pod-00", graph=sim.graph, peers=sim.peers,
                   committed=sim.members[1:], task_id=TASK_A, round_index=0)


def test_a_signed_vector_is_refused() -> None:
    sim = _shared_round()
    with pytest.raises(SecAggError, match="mask_input takes a flat uint32 or uint64 vector; got int64"):
        mask_input(np.zeros(4, np.int64), sim.secrets["pod-00"], me="pod-00", graph=sim.graph,  # type: ignore[arg-type]
                   peers=sim.peers, committed=sim.members, task_id=TASK_A, round_index=0)


def test_erased_secrets_refuse_every_use_and_were_never_picklable() -> None:
    secrets = RoundSecrets.generate()
    with pytest.raises(SecAggError, match="never persisted"):
        pickle.dumps(secrets)
    assert secrets.c_public_b64 in repr(secrets) and "live" in repr(secrets)
    secrets.erase()
    assert "erased" in str(secrets)
    sim = _shared_round()
    sim.secrets["pod-00"].erase()
    with pytest.raises(SecAggError, match="these round secrets were erased"):
        sim.mask(encode_update({"w": np.ones(3)}, params=make_params(5), n_rows=1), "pod-00")


# -- unmask_answer: the refusals that keep one pod's input hidden --------------------------


def test_a_pod_named_survivor_and_dropped_is_refused() -> None:
    sim = _shared_round()
    with pytest.raises(SecAggError, match=r"pods \['pod-02'\] are named both survivor and dropped"):
        unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=sim.members[:3],
                      dropped=["pod-02"])


def test_this_pod_named_dropped_is_refused() -> None:
    sim = _shared_round()
    with pytest.raises(SecAggError, match="this pod 'pod-00' is named dropped while it answers"):
        unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=sim.members[1:],
                      dropped=["pod-00"])


def test_pods_outside_the_neighbourhood_are_refused() -> None:
    sim = _shared_round(40)
    survivors = sim.members
    with pytest.raises(SecAggError, match="are not neighbours of 'pod-00'; a pod answers only for its own"):
        unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=survivors, dropped=[])


def test_too_few_survivors_are_refused_with_the_numbers() -> None:
    sim = _shared_round()
    with pytest.raises(SecAggError, match="only 2 of 'pod-00' and its 4 neighbours survive; unmasking needs at "
                                          "least 3"):
        unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=["pod-00", "pod-01"],
                      dropped=["pod-02", "pod-03", "pod-04"])


def test_asking_again_about_a_pod_in_the_other_role_is_refused() -> None:
    sim = _shared_round()
    first = unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=sim.members[:4],
                          dropped=["pod-04"])
    again = unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=sim.members[:4],
                          dropped=["pod-04"], previous=[first])
    assert again == first
    with pytest.raises(SecAggError, match=r"pods \['pod-04'\] were asked about in the other role"):
        unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=sim.members, dropped=[],
                      previous=[first])
    # A narrower second answer must not make the pod forget what the first one revealed.
    narrow = unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=sim.members[:3],
                           dropped=[], previous=[first])
    with pytest.raises(SecAggError, match=r"pods \['pod-03'\] were asked about in the other role"):
        unmask_answer(sim.held["pod-00"], me="pod-00", graph=sim.graph, survivors=sim.members[:3],
                      dropped=["pod-03", "pod-04"], previous=[first, narrow])


def test_an_answer_holding_both_shares_of_a_pod_cannot_be_built() -> None:
    share = Share(index=1, data=bytes(32))
    with pytest.raises(SecAggError, match=r"holds both shares of \['pod-01'\]"):
        UnmaskAnswer(self_mask_shares={"pod-01": share}, mask_key_shares={"pod-01": share})


# -- unmask_sum: the modeller's checks ------------------------------------------------------


def _masked_round(n: int = 5, dropped: tuple[str, ...] = ("pod-04",)
                  ) -> tuple[SimulatedRound, list[str], npt.NDArray[np.unsignedinteger]]:
    sim = _shared_round(n)
    params = make_params(n)
    survivors = [p for p in sim.members if p not in dropped]
    encoded = {p: encode_update({"w": np.full(8, 0.25, np.float32)}, params=params, n_rows=1) for p in survivors}
    total = sum_vectors([sim.mask(encoded[p], p) for p in survivors], layout=encoded[survivors[0]].layout,
                        params=params)
    return sim, survivors, total


def _unmask(sim: SimulatedRound, survivors: list[str], total: npt.NDArray[np.unsignedinteger],
            answers: dict[str, UnmaskAnswer]) -> npt.NDArray[np.unsignedinteger]:
    return unmask_sum(total, graph=sim.graph, peers=sim.peers, committed=sim.committed, survivors=survivors,
                      answers=answers, task_id=TASK_A, round_index=0)


def test_too_few_answers_are_refused_with_the_numbers() -> None:
    sim, survivors, total = _masked_round()
    answers = sim.answers(survivors)
    short = {p: answers[p] for p in survivors[:2]}
    with pytest.raises(
        SecAggError,
        match=r"too few shares arrived to unmask \(2 answers; pod, secret, shares arrived of "
        r"needed\): pod-00 self-mask 2 of 3; .*pod-04 mask-key 2 of 3; the masks "
        r"cannot be removed, run the round again",
    ):
        _unmask(sim, survivors, total, short)


def test_a_share_at_another_holders_index_is_refused() -> None:
    sim, survivors, total = _masked_round()
    answers = sim.answers(survivors)
    honest = answers["pod-01"].self_mask_shares["pod-00"]
    forged = dict(answers["pod-01"].self_mask_shares, **{"pod-00": Share(index=honest.index + 1, data=honest.data)})
    answers["pod-01"] = UnmaskAnswer(self_mask_shares=forged, mask_key_shares=answers["pod-01"].mask_key_shares)
    with pytest.raises(SecAggError, match="pod 'pod-01' sent share index 2 of 'pod-00'; it holds index 1"):
        _unmask(sim, survivors, total, answers)


def test_an_answer_from_a_dropped_pod_is_refused() -> None:
    sim, survivors, total = _masked_round()
    answers = sim.answers(survivors)
    answers["pod-04"] = answers["pod-03"]
    with pytest.raises(SecAggError, match="an unmask answer came from 'pod-04', which is not a survivor"):
        _unmask(sim, survivors, total, answers)


def test_a_share_the_round_does_not_call_for_is_refused() -> None:
    sim, survivors, total = _masked_round()
    answers = sim.answers(survivors)
    answers["pod-00"] = UnmaskAnswer(
        self_mask_shares={}, mask_key_shares={"pod-01": sim.held["pod-00"]["pod-01"].mask_key}
    )
    with pytest.raises(SecAggError, match="pod 'pod-00' sent a mask-key share of 'pod-01', which this round does "
                                          "not call for"):
        _unmask(sim, survivors, total, answers)


def test_a_wrong_mask_key_share_is_caught_by_the_advertised_key() -> None:
    sim, survivors, total = _masked_round(dropped=("pod-03", "pod-04"))
    answers = sim.answers(survivors)
    share = answers["pod-00"].mask_key_shares["pod-04"]
    bad = Share(index=share.index, data=bytes(32))
    answers["pod-00"] = UnmaskAnswer(self_mask_shares=answers["pod-00"].self_mask_shares,
                                     mask_key_shares={**answers["pod-00"].mask_key_shares, "pod-04": bad})
    with pytest.raises(SecAggError, match="the mask key of 'pod-04' rebuilt from its shares is not the key "
                                          "it advertised"):
        _unmask(sim, survivors, total, answers)


def test_survivors_that_never_committed_are_refused() -> None:
    sim, survivors, total = _masked_round()
    with pytest.raises(SecAggError, match=r"survivors \['pod-04'\] never committed"):
        unmask_sum(total, graph=sim.graph, peers=sim.peers, committed=survivors, survivors=sim.members,
                   answers={}, task_id=TASK_A, round_index=0)


def test_the_unmasked_sum_is_a_new_array() -> None:
    sim, survivors, total = _masked_round()
    before = total.copy()
    out = _unmask(sim, survivors, total, sim.answers(survivors))
    np.testing.assert_array_equal(total, before)
    layout = Layout.from_arrays({"w": np.zeros(8, np.float32)})
    assert int(out[layout.row_slot]) == 4
