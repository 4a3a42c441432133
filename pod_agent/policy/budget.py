"""Differential privacy at the pod: the noise a release gets, the events it costs, and the budget check.

Owns four things the verifier, the pipeline, the daemon's metrics and ``pod-agent privacy show`` share:

* ``noise_plan``: for a train task of a modeller with a ``dp`` budget, the Gaussian noise the agent adds
  (outside the sandbox, ``pod_agent.secagg.noise``) after clipping the update to L2 norm C. The owner's
  floor wins over the task: the noise multiplier is at least ``[privacy.dp].min_noise_multiplier`` and the
  clip at most ``max_clip_norm``; a task that asks for nothing still gets both.
* the release *events* stored in the ledger (``state``) as small JSON objects, one per release:
  ``{"mechanism": "gaussian", "noise_multiplier": z}`` or, for a kind the owner lets through without
  noise, ``{"mechanism": "unaccounted", "kind": ...}`` (listed, never composed: it has no finite epsilon).
* ``BudgetCheck``: composes a modeller's and the dataset's reserved and charged events with the task's
  and refuses (``privacy_budget_exhausted``) when epsilon at the budget's delta would pass either budget.
* ``budget_report``: each budget's epsilon spent (charged), committed (charged and reserved) and left.

Sensitivity. The update is clipped as a whole to L2 norm C, so any change to the pod's table, one row or
all of them, moves it by at most 2C (the diameter of the clip ball). The noise standard deviation is
z * 2C, so each release is the Gaussian mechanism with noise multiplier z for that sensitivity, and the
epsilon protects every row, and the table as a whole. The pod uses all its training rows (no sampling),
so no amplification by subsampling is claimed; one task is one round and one release.

Accounting is Google's ``dp-accounting`` (RDP accountant; imported on first use so that a pod without DP
budgets never loads it or scipy). RDP gives an upper bound on epsilon, slightly looser than PLD, and is
fast enough to run inside the state transaction that reserves the task's events.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pod_agent.config import DpBudget, ModellerPolicy, PrivacySection
from pod_agent.errors import ConfigError, TaskRefused
from pod_agent.policy.codes import RefusalCode
from pod_agent.protocol import PublicKey, TaskPayload
from pod_agent.state import LedgerEntry, Reservation

_log = logging.getLogger(__name__)

GAUSSIAN = "gaussian"
UNACCOUNTED = "unaccounted"


@dataclass(frozen=True)
class NoisePlan:
    """The noise one pod adds to one train release."""

    noise_multiplier: float  # z: noise std over the L2 sensitivity
    clip_norm: float  # C: the update's L2 norm after clipping
    honest_pods: int  # k: the noise variance is split over this many cohort members (1: all of it here)

    @property
    def sensitivity(self) -> float:
        """Any change to the table moves an update clipped to norm C by at most 2C."""
        return 2.0 * self.clip_norm

    @property
    def std(self) -> float:
        """Standard deviation of the whole release's noise, per value."""
        return self.noise_multiplier * self.sensitivity

    @property
    def share_std(self) -> float:
        """Standard deviation this pod adds, per value: k shares of variance std**2 / k sum to std**2."""
        return self.std / math.sqrt(self.honest_pods)

    def event(self) -> str:
        return gaussian_event(self.noise_multiplier)


def gaussian_event(noise_multiplier: float) -> str:
    """The ledger's JSON for one Gaussian release."""
    return json.dumps({"mechanism": GAUSSIAN, "noise_multiplier": noise_multiplier}, sort_keys=True)


def unaccounted_event(kind: str) -> str:
    """The ledger's JSON for an exact release the owner allowed without noise."""
    return json.dumps({"mechanism": UNACCOUNTED, "kind": kind}, sort_keys=True)


def noise_plan(
    privacy: PrivacySection, modeller: ModellerPolicy, task: TaskPayload, *, min_survivors: int = 1
) -> NoisePlan | None:
    """The noise the pod adds to ``task``'s release; None when the modeller has no budget or nothing is trained.

    ``min_survivors`` is the fewest pods, this one included, whose updates a secure sum this pod
    unmasks for can hold (the round's share threshold t, which the pipeline knows): the modeller
    may call the others dropped, and the pods it keeps may be the dishonest ones, so the variance is
    split over the honest pods such a sum surely holds: t - (n - honest), at least 1.
    Raises ConfigError when a budgeted modeller has no clip ceiling (settings refuse such a file).
    """
    if modeller.dp is None or task.kind != "train":
        return None
    ceiling = modeller.privacy.max_clip_norm or privacy.max_clip_norm
    if ceiling is None:
        raise ConfigError(f"modeller {modeller.name!r} has a dp budget but no max_clip_norm: set privacy.max_clip_norm")
    asked_clip = task.dp.clip_norm if task.dp is not None else task.secagg.clip_norm if task.secagg else None
    asked_noise = task.dp.noise_multiplier if task.dp is not None else 0.0
    honest = 1
    # Only an unweighted sum adds every pod's share with the same scale; weighted by rows, another pod's
    # share could be worth less than this pod's update, so under weighting this pod adds all the noise.
    if task.secagg is not None and not task.secagg.weighted:
        cohort = task.cohort.size
        honest = max(1, min_survivors - (cohort - min(privacy.dp.honest_pods, cohort)))
    return NoisePlan(
        noise_multiplier=max(asked_noise, privacy.dp.min_noise_multiplier),
        clip_norm=ceiling if asked_clip is None else min(asked_clip, ceiling),
        honest_pods=honest,
    )


def epsilon(events: Sequence[str], delta: float) -> float:
    """Epsilon at ``delta`` of all Gaussian ``events`` composed (RDP accountant); 0.0 for none."""
    multipliers: Counter[float] = Counter()
    for raw in events:
        event = json.loads(raw)
        if event["mechanism"] == GAUSSIAN:
            multipliers[float(event["noise_multiplier"])] += 1
    if not multipliers:
        return 0.0
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for noise_multiplier, count in sorted(multipliers.items()):
        accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), count)
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class BudgetCheck:
    """The admission test the state runs inside the verdict's transaction (``Reservation.admit``)."""

    modeller_name: str
    modeller: DpBudget
    dataset: DpBudget | None

    def admit(self, modeller_events: Sequence[str], dataset_events: Sequence[str], new: Sequence[str]) -> None:
        """Raise TaskRefused (privacy_budget_exhausted) when ``new`` would pass either budget."""
        spent = epsilon([*modeller_events, *new], self.modeller.delta)
        if spent > self.modeller.epsilon:
            raise TaskRefused(
                RefusalCode.PRIVACY_BUDGET_EXHAUSTED.value,
                f"modeller {self.modeller_name!r} would reach epsilon {spent:.3f} at delta {self.modeller.delta:g}, "
                f"over its dp budget {self.modeller.epsilon:g}; raise it in pod.toml only if the owner agrees",
            )
        if self.dataset is None:
            return
        spent = epsilon([*dataset_events, *new], self.dataset.delta)
        if spent > self.dataset.epsilon:
            raise TaskRefused(
                RefusalCode.PRIVACY_BUDGET_EXHAUSTED.value,
                f"the dataset would reach epsilon {spent:.3f} at delta {self.dataset.delta:g} over all modellers, "
                f"over privacy.dp.dataset's {self.dataset.epsilon:g}",
            )


class PrivacyBudgets:
    """The pod's budgets: what a task may release, and the reservation that charges it."""

    def __init__(self, privacy: PrivacySection, *, dataset: str, row_count: int) -> None:
        self._privacy = privacy
        self._dataset = dataset
        self._row_count = row_count
        if privacy.dp.dataset is not None:
            self._check_delta(privacy.dp.dataset, "privacy.dp.dataset")

    @property
    def dataset(self) -> str:
        return self._dataset

    def check_modeller(self, modeller: ModellerPolicy) -> None:
        """Raise ConfigError for a budget whose delta is over 1 / rows (one row could then leak outright)."""
        if modeller.dp is not None:
            self._check_delta(modeller.dp, f"modeller {modeller.name!r}'s dp")

    def _check_delta(self, budget: DpBudget, where: str) -> None:
        if budget.delta * self._row_count > 1:
            raise ConfigError(
                f"{where} delta = {budget.delta:g} is over 1 / rows = 1 / {self._row_count}: a mechanism may fail "
                f"that often and so could publish one row in full; use delta <= {1 / max(1, self._row_count):.3g}"
            )

    def reservation(self, task: TaskPayload, modeller: ModellerPolicy) -> Reservation | None:
        """What ``task`` will release, to reserve with its verdict; None for a modeller without a budget.

        Raises TaskRefused (unaccounted_release) for a kind that releases exact values unless the owner
        lists it in ``privacy.dp.unsafe_unaccounted_kinds``.
        """
        if modeller.dp is None:
            return None
        plan = noise_plan(self._privacy, modeller, task)
        if plan is not None and task.returns == "weights":
            raise TaskRefused(
                RefusalCode.UNACCOUNTED_RELEASE.value,
                f"modeller {modeller.name!r} has a dp budget: a train task must return an update (new - old), "
                "whose L2 norm the pod clips before the noise; trained weights cannot be clipped that way",
                task_id=task.task_id,
            )
        if plan is not None:
            event = plan.event()
        elif task.kind in self._privacy.dp.unsafe_unaccounted_kinds:
            _log.warning("unsafe: %s task %s of dp-budgeted modeller %r releases exact values (unaccounted)",
                         task.kind, task.task_id, modeller.name)
            event = unaccounted_event(task.kind)
        else:
            raise TaskRefused(
                RefusalCode.UNACCOUNTED_RELEASE.value,
                f"modeller {modeller.name!r} has a dp budget, and a {task.kind} task releases exact values that "
                "cannot be accounted; list the kind in privacy.dp.unsafe_unaccounted_kinds to allow it anyway",
                task_id=task.task_id,
            )
        check = BudgetCheck(modeller_name=modeller.name, modeller=modeller.dp, dataset=self._privacy.dp.dataset)
        round_index = task.secagg.round if task.secagg is not None else 0
        keys = tuple(PublicKey.from_b64(k.public_key).key_id for k in modeller.signing_keys())
        return Reservation(dataset=self._dataset, round=round_index, events=(event,), admit=check.admit,
                           modeller_keys=keys)


@dataclass(frozen=True)
class BudgetUse:
    """How much of one budget (a modeller's, or the dataset's) the ledger holds, for ``pod-agent privacy show``."""

    budget: str  # "modeller NAME" or "dataset HASH16"
    epsilon: float  # the budget's epsilon
    delta: float
    spent: float  # epsilon of the charged releases
    committed: float  # epsilon of the charged and the reserved releases together
    releases: int  # charged Gaussian releases
    reserved: int  # reserved, not yet charged or refunded
    unaccounted: int  # exact releases the owner let through (not in epsilon)

    @property
    def left(self) -> float:
        return max(0.0, self.epsilon - self.committed)


def _use(budget: str, limit: DpBudget, entries: Sequence[LedgerEntry]) -> BudgetUse:
    live = [e for e in entries if e.status != "refunded"]
    charged = [e.event_json for e in live if e.status == "charged"]
    gaussian = [e for e in live if json.loads(e.event_json)["mechanism"] == GAUSSIAN]
    return BudgetUse(
        budget=budget, epsilon=limit.epsilon, delta=limit.delta,
        spent=epsilon(charged, limit.delta), committed=epsilon([e.event_json for e in live], limit.delta),
        releases=sum(1 for e in gaussian if e.status == "charged"),
        reserved=sum(1 for e in live if e.status == "reserved"),
        unaccounted=len(live) - len(gaussian),
    )


def budget_report(
    privacy: PrivacySection, modellers: Sequence[ModellerPolicy], entries: Sequence[LedgerEntry]
) -> list[BudgetUse]:
    """Each modeller's budget, then the dataset cap per dataset the ledger names; empty without budgets."""
    report = []
    for modeller in modellers:
        if modeller.dp is not None:
            key_ids = {PublicKey.from_b64(k.public_key).key_id for k in modeller.signing_keys()}
            own = [e for e in entries if e.modeller_id in key_ids]
            report.append(_use(f"modeller {modeller.name}", modeller.dp, own))
    cap = privacy.dp.dataset
    if cap is not None:
        datasets = sorted({e.dataset for e in entries})
        for dataset in datasets:
            report.append(_use(f"dataset {dataset[:16]}", cap, [e for e in entries if e.dataset == dataset]))
        if not datasets:
            report.append(_use("dataset", cap, []))
    return report
