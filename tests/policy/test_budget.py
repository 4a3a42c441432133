"""The pod's DP budget: projected epsilon against the accounting library, and refusals past a budget."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import (
    POD,
    Pod,
    cohort,
    make_task,
    policy_for,
    privacy,
    signed,
    verifier_for,
)

from pod_agent.config.settings import DpBudget, DpSection, ModellerPolicy, PodSettings
from pod_agent.errors import ConfigError
from pod_agent.policy.budget import epsilon, gaussian_event, noise_plan, unaccounted_event
from pod_agent.protocol import IdentityKey
from pod_agent.protocol.messages import DpParams
from pod_agent.state import PodState, TaskStatus

ALICE, BOB = IdentityKey.generate(), IdentityKey.generate()
DELTA = 1e-5


def _dp_privacy(**dp: Any) -> Any:
    return privacy(max_clip_norm=1.0, dp=DpSection(**dp))


def _dp_policy(epsilon_budget: float = 3.0, *, bob_budget: float | None = None) -> Any:
    base = policy_for(ALICE, BOB)
    alice = base.modellers[0].model_copy(update={"dp": DpBudget(epsilon=epsilon_budget, delta=DELTA)})
    bob = base.modellers[1]
    if bob_budget is not None:
        bob = bob.model_copy(update={"dp": DpBudget(epsilon=bob_budget, delta=DELTA)})
    return base.model_copy(update={"modellers": [alice, bob]})


def _pod(tmp_path: Path, *, budget: float = 3.0, **dp: Any) -> Pod:
    state = PodState.open(tmp_path / "state.sqlite")
    return Pod(verifier_for(_dp_policy(budget), _dp_privacy(**dp), state), state)


def _task(key: IdentityKey, **overrides: Any) -> Any:
    """A train task that clips to the floor's max_clip_norm, or ``overrides``."""
    return make_task(key, **({"secagg": cohort([POD, "pod-b", "pod-c"], clip_norm=1.0)} | overrides))


def _train(**overrides: Any) -> bytes:
    return signed(_task(ALICE, **overrides), ALICE)


# -- accounting ---------------------------------------------------------------------------------


def test_projected_epsilon_is_the_librarys_rdp_figure() -> None:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(1.1), 7)
    accountant.compose(dp_accounting.GaussianDpEvent(2.0), 3)
    events = [gaussian_event(1.1)] * 7 + [gaussian_event(2.0)] * 3 + [unaccounted_event("evaluate")]
    assert epsilon(events, DELTA) == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)


def test_one_gaussian_release_lies_between_the_tight_pld_and_the_classic_rdp_bound() -> None:
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    pld = PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(1.0))
    # Mironov's conversion, RDP(alpha) = alpha / (2 z^2), minimised over alpha: a published upper bound.
    classic = min(a / 2 + math.log(1 / DELTA) / (a - 1) for a in (1 + i / 100 for i in range(1, 5000)))
    ours = epsilon([gaussian_event(1.0)], DELTA)
    assert pld.get_epsilon(DELTA) <= ours <= classic
    assert ours == pytest.approx(4.7285, abs=1e-3)


def test_gaussian_releases_compose_like_one_with_the_noise_over_root_count() -> None:
    many = epsilon([gaussian_event(3.0)] * 10, DELTA)
    assert many == pytest.approx(epsilon([gaussian_event(3.0 / math.sqrt(10))], DELTA), rel=1e-9)
    assert epsilon([], DELTA) == 0.0


# -- the owner's floor over the task's request --------------------------------------------------


def test_a_task_asking_less_noise_or_a_looser_clip_than_the_owner_gets_the_owners() -> None:
    modeller = _dp_policy().modellers[0]
    task = make_task(ALICE, dp=DpParams(noise_multiplier=0.1, clip_norm=50.0))
    plan = noise_plan(_dp_privacy(min_noise_multiplier=1.5), modeller, task)
    assert plan is not None and (plan.noise_multiplier, plan.clip_norm) == (1.5, 1.0)
    assert plan.std == pytest.approx(1.5 * 2 * 1.0)


def test_a_task_that_asks_nothing_is_noised_all_the_same() -> None:
    modeller = _dp_policy().modellers[0]
    plan = noise_plan(_dp_privacy(), modeller, make_task(ALICE))
    assert plan is not None and plan.noise_multiplier == 1.0 and plan.clip_norm == 1.0


def test_the_variance_is_split_only_over_honest_pods_a_secure_sum_surely_holds() -> None:
    modeller = _dp_policy().modellers[0]
    pods = [POD, "pod-b", "pod-c", "pod-d"]

    def split(honest: int, survivors: int, **secagg: Any) -> int:
        task = make_task(ALICE, pods=pods, secagg=cohort(pods, **secagg))
        plan = noise_plan(_dp_privacy(honest_pods=honest), modeller, task, min_survivors=survivors)
        assert plan is not None and plan.share_std == pytest.approx(plan.std / math.sqrt(plan.honest_pods))
        return plan.honest_pods

    # Four pods, all honest, a sum of at least 3 of them: a third of the variance each.
    assert split(4, 3, weighted=False) == 3
    # Three honest of four: the sum the modeller keeps may hold the dishonest one, so only 2 surely honest.
    assert split(3, 3, weighted=False) == 2
    assert split(2, 3, weighted=False) == 1
    assert split(9, 1, weighted=False) == 1  # without the round's threshold the pod splits nothing
    assert split(4, 3) == 1  # a row-weighted sum: this pod adds all the noise
    plain = noise_plan(_dp_privacy(honest_pods=4), modeller, make_task(ALICE, secagg=None), min_survivors=3)
    assert plain is not None and plain.honest_pods == 1


def test_a_budget_needs_a_clip_ceiling_and_a_dataset_cap_binds_every_modeller(tmp_path: Path) -> None:
    alice = ModellerPolicy(name="alice", public_key=ALICE.public.to_b64(), role="super",
                           dp=DpBudget(epsilon=1, delta=DELTA))
    bob = ModellerPolicy(name="bob", public_key=BOB.public.to_b64(), role="super")
    base = {"pod": {"name": "p"}, "datasource": {"path": str(tmp_path)}}
    with pytest.raises(ValueError, match="no max_clip_norm"):
        PodSettings(**base, security={"modellers": [alice]})
    with pytest.raises(ValueError, match="binds every modeller"):
        PodSettings(**base, security={"modellers": [alice, bob]},
                    privacy={"max_clip_norm": 1.0, "dp": {"dataset": {"epsilon": 5, "delta": DELTA}}})


def test_a_delta_over_one_over_rows_is_a_config_error(tmp_path: Path) -> None:
    state = PodState.open(tmp_path / "state.sqlite")
    loose = _dp_policy().modellers[0].model_copy(update={"dp": DpBudget(epsilon=1, delta=0.01)})
    with pytest.raises(ConfigError, match=r"delta = 0.01 is over 1 / rows = 1 / 1000"):
        verifier_for(policy_for(ALICE, BOB, modellers=[loose]), _dp_privacy(), state, row_count=1000)


# -- refusals through the verifier and the ledger ----------------------------------------------


def test_tasks_are_accepted_until_the_next_would_pass_the_budget(tmp_path: Path) -> None:
    pod = _pod(tmp_path, budget=3.0, min_noise_multiplier=2.0)
    one = epsilon([gaussian_event(2.0)], DELTA)
    fits = max(n for n in range(1, 50) if epsilon([gaussian_event(2.0)] * n, DELTA) <= 3.0)
    assert one < 3.0 and fits >= 1
    for _ in range(fits):
        pod.accept(_train())
    refusal = pod.refusal(_train())
    assert refusal.code == "privacy_budget_exhausted"
    assert refusal.task_id is not None
    recorded = pod.state.get_task(refusal.task_id)
    assert recorded is not None and recorded.status is TaskStatus.REFUSED
    assert recorded.reason == "privacy_budget_exhausted"
    assert [e.status for e in pod.state.ledger()] == ["reserved"] * fits


def test_a_refunded_reservation_gives_the_budget_back(tmp_path: Path) -> None:
    pod = _pod(tmp_path, budget=5.0, min_noise_multiplier=1.0)
    first = pod.accept(_train()).payload.task_id
    assert pod.refusal(_train()).code == "privacy_budget_exhausted"  # one release at z=1 is 4.7 at 1e-5
    pod.state.claim_next(now=1)
    pod.state.finish(first, status="failed", result_json="{}", reason="model_error", now=2)
    assert pod.state.ledger()[0].status == "refunded"
    pod.accept(_train())


def test_the_dataset_cap_binds_modellers_together(tmp_path: Path) -> None:
    state = PodState.open(tmp_path / "state.sqlite")
    section = privacy(max_clip_norm=1.0, dp=DpSection(min_noise_multiplier=3.0,
                                                       dataset=DpBudget(epsilon=2.6, delta=DELTA)))
    security = _dp_policy(10.0, bob_budget=10.0)
    security = security.model_copy(update={"modellers": [security.modellers[0],
                                                        security.modellers[1].model_copy(update={"role": "super"})]})
    pod = Pod(verifier_for(security, section, state), state)
    fits = max(n for n in range(1, 50) if epsilon([gaussian_event(3.0)] * n, DELTA) <= 2.6)
    assert fits == 3  # alice, bob, alice: each well under her own budget of 10
    for index in range(fits):
        key = ALICE if index % 2 == 0 else BOB
        pod.accept(signed(_task(key), key))
    refusal = pod.refusal(signed(_task(BOB), BOB))
    assert refusal.code == "privacy_budget_exhausted"
    assert "over all modellers" in refusal.detail


def test_exact_releases_are_refused_to_a_budgeted_modeller_unless_the_owner_allows_them(tmp_path: Path) -> None:
    pod = _pod(tmp_path)
    evaluate = make_task(ALICE, kind="evaluate", secagg=None, weights=None)
    assert pod.refusal(signed(evaluate, ALICE)).code == "unaccounted_release"
    stats = make_task(ALICE, kind="schema-stats", secagg=None, weights=None, model=None, data=None)
    assert pod.refusal(signed(stats, ALICE)).code == "unaccounted_release"

    allowing = _pod(tmp_path / "allowing", unsafe_unaccounted_kinds=["evaluate"], min_noise_multiplier=2.0)
    allowing.accept(signed(make_task(ALICE, kind="evaluate", secagg=None, weights=None), ALICE))
    assert allowing.state.ledger()[0].event_json == unaccounted_event("evaluate")
    # Unaccounted releases are listed, not composed: the budget still admits a train task.
    allowing.accept(_train())


def test_a_modeller_without_a_budget_is_not_accounted(tmp_path: Path) -> None:
    pod = _pod(tmp_path)
    pod.accept(signed(_task(BOB), BOB))
    assert pod.state.ledger() == []


def test_concurrent_verifications_cannot_overspend(tmp_path: Path) -> None:
    """Threads with their own connections to one file: BEGIN IMMEDIATE serialises check and reserve."""
    path = tmp_path / "state.sqlite"
    section = _dp_privacy(min_noise_multiplier=2.0)
    fits = max(n for n in range(1, 50) if epsilon([gaussian_event(2.0)] * n, DELTA) <= 3.0)
    tasks = [_train() for _ in range(fits + 8)]
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(tasks))

    def verify(raw: bytes) -> None:
        state = PodState.open(path)
        try:
            pod = Pod(verifier_for(_dp_policy(3.0), section, state), state)
            start.wait()
            try:
                pod.accept(raw)
                outcome = "accepted"
            except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
                outcome = getattr(exc, "code", repr(exc))
            with lock:
                outcomes.append(outcome)
        finally:
            state.close()

    PodState.open(path).close()
    threads = [threading.Thread(target=verify, args=(raw,)) for raw in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted(["accepted"] * fits + ["privacy_budget_exhausted"] * 8)
    with PodState.open(path) as state:
        assert len([e for e in state.ledger() if e.status == "reserved"]) == fits
