"""Federated averaging over R rounds, optionally under secure aggregation.

Owns the round loop on the modeller's side: publish the global weights, sign and
send a train task to the cohort, collect the pods' signed results, unmask or
average them, apply the mean update, and stop early on a patience rule. The global
model a round makes is evaluated by the next round's train tasks before they train
(``TaskPayload.evaluate_first``: one task per round, not two), so a round's record
is complete when the next round's results are in; the last round's model is
evaluated by an evaluate task of its own. A train task's test metrics come back per pod
in a plain round and only as cohort means inside the masked sum in a secure one (means
weighted by training rows). The secure sum's modulus is 32 bits when the fixed-point
checks say a 32-bit sum cannot wrap for this cohort (no masked metrics, and weights
within range), else 64. Under secure aggregation a
round is one SecAgg+ run (``secure_round.py``): pods that drop out at any stage are
left out inside the round, and the survivors' weighted mean comes back without a
retry. A round is never run again from the same weights: two sums that differ by one
pod would reveal its update, and the pods refuse it (``already_released``).

Strategies (``FedAvgPlan.strategy``, ``strategies.py``): the mean update is stepped by the strategy's server
optimiser (FedAvgM, FedAdam, FedYogi, FedAdagrad), or, in plain rounds only, replaced by a robust aggregate
(median, trimmed mean); a train task carries FedProx's ``proximal_mu`` and SCAFFOLD's server control variate
(published each round like the weights), whose change comes back from each pod in its update vector,
masked with it.

Differential privacy (``FedAvgPlan.dp``): ``plan_dp`` turns a target epsilon into the noise
multiplier for the planned rounds (or, given a multiplier, the rounds that fit), accounted as each
pod accounts it (``pod_agent.policy.budget``: one Gaussian release per round, RDP). The tasks carry
that request (``DpParams``) but each pod adds at least its owner's noise whatever they ask. Under DP
the secure sum is unweighted (so pods may split the noise variance), pods send no train metrics
(so no train task evaluates first), and evaluate and schema-stats tasks (exact releases a pod refuses
unless its owner allows them) are sent only when the plan says the owners allow them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors.numpy import load_file

from pod_agent.errors import ModellerError, SecAggError
from pod_agent.modeller.client import SEE_POD_LIST, ModellerClient, PodInfo, VerifiedResult
from pod_agent.modeller.notebook import schema_stats
from pod_agent.modeller.report import PodMetrics, RoundRecord, RunReport
from pod_agent.modeller.secure_round import run_secure_round
from pod_agent.modeller.strategies import ServerControl, ServerOptimizer, Strategy, robust_mean
from pod_agent.modeller.tasks import build_task
from pod_agent.modeller.weights import initial_weights, publish_weights
from pod_agent.policy import epsilon, gaussian_event
from pod_agent.protocol import (
    CohortEntry,
    DataSelection,
    DpParams,
    Hyperparameters,
    ModelRef,
    ScaffoldParams,
    SecAggParams,
    TaskKind,
    TaskPayload,
    WeightsRef,
)
from pod_agent.secagg import ClipBound, Layout, aggregate_masked, floating_tensors, plan_encoding, plan_metrics
from pod_agent.training import tagged, untagged

_log = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class SecureSettings:
    """Parameter clipping in the seeds' form; ``num_workers`` is the cohort size of each round.

    The defaults bound every update value to |v| <= prime_q / (2 * precision * N): 4 for
    N = 2, 2.7 for N = 3, within a pod owner's default ceiling (privacy.max_clip_bound = 4).
    Weighting each value by the pod's training rows, or masked metrics, usually need the
    64-bit modulus (``choose_modulus_bits``); an unweighted sum without metrics fits 32 bits.
    """

    prime_q: int = 2**20
    precision: int = 2**16
    modulus_bits: Literal[32, 64] | None = None  # None: 32 when a 32-bit sum cannot wrap, else 64
    clip_norm: float | None = None
    # Train metrics whose cohort means come back inside the masked sum (a pod reports none in clear).
    metrics: tuple[str, ...] = ("train_loss",)
    advert_timeout_s: float = 600.0  # how long the cohort may train before the round goes on without a pod
    stage_timeout_s: float = 60.0  # how long each later stage waits for a pod


@dataclass(frozen=True)
class DpTarget:
    """The privacy a modeller plans for: each pod's (epsilon, delta) over the whole run."""

    epsilon: float
    delta: float
    clip_norm: float = 1.0  # L2 clip of each pod's update; a pod clips to its own ceiling if lower
    noise_multiplier: float | None = None  # None: the least noise that fits the planned rounds
    exact_releases: bool = False  # the pods' owners allow evaluate and schema-stats for this modeller


# Noise multipliers the calibration searches; beyond 1000 no useful model trains.
_NOISE_BRACKET = (0.05, 1000.0)


def plan_dp(target: DpTarget, rounds: int) -> DpParams:
    """The noise multiplier for ``rounds`` releases at ``target`` (calibrated with dp-accounting's RDP
    accountant, rounded up), or with ``target.noise_multiplier`` the most rounds (<= ``rounds``) that fit.

    Raises ModellerError when not even one round fits.
    """
    if target.noise_multiplier is not None:
        z = target.noise_multiplier
        fitting = [r for r in range(1, rounds + 1) if epsilon([gaussian_event(z)] * r, target.delta) <= target.epsilon]
        if not fitting:
            raise ModellerError(
                f"one round at noise multiplier {z:g} already costs epsilon "
                f"{epsilon([gaussian_event(z)], target.delta):.3f} > {target.epsilon:g}: add noise or raise the target"
            )
        return DpParams(noise_multiplier=z, clip_norm=target.clip_norm, rounds=max(fitting))
    import dp_accounting
    from dp_accounting import mechanism_calibration
    from dp_accounting.rdp import RdpAccountant

    found = mechanism_calibration.calibrate_dp_mechanism(
        RdpAccountant,
        lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds),
        target.epsilon, target.delta,
        mechanism_calibration.ExplicitBracketInterval(*_NOISE_BRACKET),
    )
    # Four significant digits, rounded up: the signed multiplier must not cost more than the target.
    step = 10 ** (math.floor(math.log10(found)) - 3)
    return DpParams(noise_multiplier=math.ceil(found / step) * step, clip_norm=target.clip_norm, rounds=rounds)


@dataclass(frozen=True)
class FedAvgPlan:
    model: ModelRef
    pods: list[str]
    selection: DataSelection
    rounds: int
    epochs_per_round: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 42
    secure: SecureSettings | None = field(default_factory=SecureSettings)
    min_pods: int = 3
    patience: int | None = None  # stop after this many rounds without a better overall loss
    # Standardise continuous features with the cohort's pooled moments (from one
    # schema-stats task) rather than each pod's own, so a value means the same everywhere.
    cohort_scaling: bool = True
    task_timeout_s: float = 600.0
    dp: DpTarget | None = None
    # What travels (Hyperparameters.exchange: "trainable" sends only e.g. LoRA adapters) and in which dtype.
    exchange: Literal["all", "trainable"] = "all"
    wire_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # How updates are aggregated and stepped, and what the pods add to local training (strategies.py).
    strategy: Strategy = field(default_factory=Strategy)

    def __post_init__(self) -> None:
        self.strategy.check(secure=self.secure is not None)


# What a train task that evaluates first reports of the model it started from (the egress names).
EVALUATED_METRICS = ("test_loss", "test_accuracy")
# The record key of a secure round's evaluation: the cohort's means, no pod's own.
COHORT = "cohort"


@dataclass(frozen=True)
class _Trained:
    """A round's outcome: the pods that answered, their mean update, and (when the tasks evaluated
    first) the incoming model's test metrics per pod, or under ``COHORT`` in a secure round."""

    cohort: list[str]
    mean_update: Weights
    evaluated: dict[str, PodMetrics]


@dataclass
class FedAvgResult:
    weights: Weights
    report: RunReport


class FedAvg:
    """Runs a plan against a hub through ``client``; the caller owns the client's lifetime."""

    def __init__(
        self,
        client: ModellerClient,
        plan: FedAvgPlan,
        *,
        work_dir: Path,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.client, self.plan, self.work_dir = client, plan, work_dir
        self.on_round = on_round
        self._schema_hashes: dict[str, str] = {}
        self.selection = plan.selection
        self.dp = None if plan.dp is None else plan_dp(plan.dp, plan.rounds)
        # Exact releases (evaluate, schema-stats) go to DP-budgeted pods only if their owners allow them.
        self._exact = plan.dp is None or plan.dp.exact_releases
        # Train tasks evaluate the incoming model only where train metrics leave the pod (not under DP).
        self._inline_evaluation = plan.dp is None
        self._row_counts: dict[str, int] = {}
        self._best_loss, self._stale = float("inf"), 0
        self._optimizer = ServerOptimizer(plan.strategy)
        # SCAFFOLD: the server's control variate (from the first weights), published beside them each round;
        # the pods key their own by this run's id.
        self._control: ServerControl | None = None
        self._control_ref: WeightsRef | None = None
        self._run_id = str(uuid.uuid4())

    async def run(self, initial: Weights | None = None) -> FedAvgResult:
        """Train from ``initial`` for the planned rounds; by default from the model as a pod
        would build it (same seed) for the cohort's common datastructure."""
        plan = self.plan
        check_cohort(plan)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        listed = await self.client.registered(plan.pods, hint=SEE_POD_LIST)
        self._schema_hashes = {p: info.schema_hash for p, info in listed.items()}
        self._row_counts = {p: info.row_count for p, info in listed.items()}
        if plan.cohort_scaling and self._exact:
            self.selection = self.selection.model_copy(update={"scaling": await self._cohort_scaling()})
        if initial is None:
            initial = await asyncio.to_thread(self._initial_weights, [listed[p] for p in plan.pods])
        weights = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in sorted(initial.items())}
        self._optimizer = ServerOptimizer(plan.strategy)
        self._control = ServerControl(floating_tensors(weights)) if plan.strategy.scaffold else None
        report = RunReport()
        cohort = list(plan.pods)
        self._best_loss, self._stale = float("inf"), 0
        weights_ref: WeightsRef | None = None
        rounds = plan.rounds if self.dp is None else self.dp.rounds
        if rounds < plan.rounds:
            report.notes.append(f"{rounds} of {plan.rounds} rounds fit the privacy target")
        unevaluated: tuple[int, float] | None = None  # (round, seconds) of a model the next tasks evaluate
        for round_index in range(1, rounds + 1):
            started = time.monotonic()
            if weights_ref is None:  # uploaded within round 1 so its time counts the upload
                weights_ref = await self._publish(weights, f"round{round_index}")
            if self._control is not None:
                self._control_ref = await self._publish(self._control.c, f"round{round_index}-control")
            trained = await self._train_round(
                weights, weights_ref, cohort, round_index, evaluate_first=unevaluated is not None
            )
            if unevaluated is not None:
                previous, seconds = unevaluated
                if self._recorded(report, RoundRecord(round=previous, pods=trained.evaluated, seconds=seconds)):
                    # The model just evaluated is the one returned; this round's update is left unapplied.
                    return FedAvgResult(weights=weights, report=report)
            weights = self._step(weights, trained, planned=len(plan.pods))
            cohort = trained.cohort
            # The upload evaluated is what the next round trains from: one copy of each global model.
            weights_ref = await self._publish(weights, f"round{round_index}-result")
            if self._inline_evaluation and round_index < rounds:
                unevaluated = round_index, time.monotonic() - started
                continue
            label = f"round{round_index}-result"
            pods = await self._evaluate(weights_ref, cohort, label=label) if self._exact else {}
            if self._recorded(report, RoundRecord(round=round_index, pods=pods, seconds=time.monotonic() - started)):
                break
        return FedAvgResult(weights=weights, report=report)

    def _recorded(self, report: RunReport, record: RoundRecord) -> bool:
        """Add ``record`` to ``report``; True when the patience rule says to stop after it."""
        report.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)
        overall = record.overall.loss
        if overall < self._best_loss - 1e-6:
            self._best_loss, self._stale = overall, 0
        else:
            self._stale += 1
        if self.plan.patience is not None and self._stale >= self.plan.patience:
            report.notes.append(f"stopped after round {record.round}: no better loss for {self._stale} rounds")
            return True
        return False

    def _initial_weights(self, cohort: list[PodInfo]) -> Weights:
        return initial_weights(self.plan.model, cohort, self.selection, self._hyperparameters())

    def _hyperparameters(self) -> Hyperparameters:
        plan = self.plan
        learning_rate = plan.learning_rate if plan.strategy.eta_l is None else plan.strategy.eta_l
        return Hyperparameters(
            epochs=plan.epochs_per_round, batch_size=plan.batch_size, learning_rate=learning_rate, seed=plan.seed,
            exchange=plan.exchange, wire_dtype=plan.wire_dtype,
        )

    def _step(self, weights: Weights, trained: _Trained, *, planned: int) -> Weights:
        """The next global weights: the strategy's server step from the cohort's mean update; under SCAFFOLD
        the server control variate moves by the mean control change, scaled by the share of pods that answered."""
        update, control = untagged(trained.mean_update)
        if self._control is not None:
            self._control.step(control, share=len(trained.cohort) / planned)
        return apply_mean_update(weights, self._optimizer.step(update))

    def _exchanged(self, weights: Weights) -> Weights:
        """What a pod's update vector holds: the floating weights and, under SCAFFOLD, the control change."""
        floats = floating_tensors(weights)
        return floats if self._control is None else floats | tagged(self._control.c)

    # -- one round --------------------------------------------------------------------------------

    async def _cohort_scaling(self) -> dict[str, tuple[float, float]]:
        """Pooled (mean, std) of every continuous column, from the pods' schema-stats results."""
        stats = await schema_stats(
            self.client, self.plan.pods, timeout_s=self.plan.task_timeout_s, schema_hashes=self._schema_hashes
        )
        return pooled_moments(list(stats.values()))

    async def _train_round(
        self, weights: Weights, weights_ref: WeightsRef, cohort: list[str], round_index: int, *, evaluate_first: bool
    ) -> _Trained:
        """Train ``weights`` (uploaded as ``weights_ref``) on ``cohort``; with ``evaluate_first`` the tasks
        also evaluate ``weights`` before training."""
        secure = self.plan.secure
        if secure is not None:
            return await self._secure_round(weights, weights_ref, cohort, round_index, secure, evaluate_first)
        task = await self._submit(
            "train", await self._entries(cohort), weights_ref, secagg=None, evaluate_first=evaluate_first
        )
        answers = await self.client.wait_results(task.task_id, cohort, timeout_s=self.plan.task_timeout_s)
        ok = {pod: r for pod, r in answers.items() if isinstance(r, VerifiedResult) and r.payload.status == "done"}
        failed = sorted(set(cohort) - set(ok))
        if failed:
            reasons = {pod: _reason(answers.get(pod)) for pod in failed}
            _log.warning("round %d: pods %s failed (%s); averaging the others", round_index, failed, reasons)
            if not ok:
                raise ModellerError(f"round {round_index}: every pod failed: {reasons}")
        evaluated = {pod: _pod_metrics(r.payload.metrics, r.payload.n_rows) for pod, r in sorted(ok.items())}
        return _Trained(
            cohort=[p for p in cohort if p in ok],
            mean_update=await self._aggregate(task.task_id, ok, weights),
            evaluated=evaluated if evaluate_first else {},
        )

    async def _secure_round(
        self, weights: Weights, weights_ref: WeightsRef, cohort: list[str], round_index: int, secure: SecureSettings,
        evaluate_first: bool,
    ) -> _Trained:
        """One SecAgg+ round: the survivors' weighted mean, with no retry whoever drops out. The incoming
        model's test metrics (``evaluate_first``) come back only as cohort means inside the masked sum."""
        secagg = await self._secagg(secure, cohort, round_index, evaluate_first=evaluate_first)
        entries = await self._entries(cohort)
        task = await self._submit("train", entries, weights_ref, secagg=secagg, evaluate_first=evaluate_first)
        layout = Layout.from_arrays(self._exchanged(weights), secagg.metrics)
        outcome = await run_secure_round(
            self.client, task, entries, vector_size=layout.size, work_dir=self.work_dir, min_pods=self.plan.min_pods
        )
        if outcome.refused:
            _log.warning("round %d: pods refused the task %s; the round completed with %s", round_index,
                         outcome.refused, list(outcome.survivors))
        gone = sorted(set(cohort) - set(outcome.survivors) - set(outcome.refused))
        if gone:
            _log.warning("round %d: pods %s dropped out; the round completed with %s", round_index, gone,
                         list(outcome.survivors))
        try:
            summed = aggregate_masked([outcome.total], layout=layout, params=secagg, n_pods=len(outcome.survivors))
        except SecAggError as exc:
            raise ModellerError(f"task {task.task_id}: the unmasked sum does not decode: {exc}") from exc
        if summed.metrics:
            _log.info("round %d: cohort train metrics %s over %d rows", round_index,
                      {k: round(v, 4) for k, v in sorted(summed.metrics.items())}, summed.total_rows)
        mean = {name: summed.mean[name].astype(np.float32) for name in self._exchanged(weights)}
        evaluated = {COHORT: _pod_metrics(summed.metrics, summed.total_rows)} if evaluate_first else {}
        return _Trained(cohort=list(outcome.survivors), mean_update=mean, evaluated=evaluated)

    async def evaluate(self, weights: Weights, cohort: list[str], *, label: str) -> dict[str, PodMetrics]:
        """Metrics of ``weights`` on each pod's test split (an evaluate task; no tensors come back)."""
        return await self._evaluate(await self._publish(weights, label), cohort, label=label)

    async def _evaluate(self, weights_ref: WeightsRef, cohort: list[str], *, label: str) -> dict[str, PodMetrics]:
        task = await self._submit("evaluate", await self._entries(cohort), weights_ref, secagg=None)
        answers = await self.client.wait_results(task.task_id, cohort, timeout_s=self.plan.task_timeout_s)
        metrics: dict[str, PodMetrics] = {}
        for pod, answer in sorted(answers.items()):
            if not isinstance(answer, VerifiedResult) or answer.payload.status != "done":
                _log.warning("%s: pod %s did not evaluate (%s)", label, pod, _reason(answer))
                continue
            metrics[pod] = _pod_metrics(answer.payload.metrics, answer.payload.n_rows)
        return metrics

    async def _aggregate(self, task_id: str, results: Mapping[str, VerifiedResult], weights: Weights) -> Weights:
        """The row-weighted mean of plain (unmasked) updates, or the strategy's robust aggregate of them."""
        blobs: dict[str, Path] = {}
        for pod, result in sorted(results.items()):
            blob = result.payload.blob
            if blob is None:
                raise ModellerError(f"pod {pod} returned no update for task {task_id}")
            blobs[pod] = await self.client.download_blob(blob.sha256, self.work_dir / f"{task_id}.{pod}.blob")
        total = sum(results[pod].payload.n_rows for pod in blobs)
        updates = {pod: load_file(str(path)) for pod, path in blobs.items()}
        if self.plan.strategy.robust:
            return robust_mean(list(updates.values()), self.plan.strategy)
        mean = {name: np.zeros_like(a) for name, a in self._exchanged(weights).items()}
        for pod, update in updates.items():
            share = results[pod].payload.n_rows / total
            for name in mean:
                mean[name] += share * update[name]
        return mean

    # -- plumbing ----------------------------------------------------------------------------------

    async def _publish(self, weights: Weights, label: str) -> WeightsRef:
        return await publish_weights(self.client, weights, self.work_dir / f"global-{label}.safetensors")

    async def _secagg(
        self, secure: SecureSettings, cohort: list[str], round_index: int, *, evaluate_first: bool
    ) -> SecAggParams:
        # Under DP the pods clip before their noise, send no metrics, and the sum is unweighted so that
        # each pod's share of the noise counts the same (a pod splits the variance only then).
        dp = self.dp
        metrics = [] if dp is not None else [*secure.metrics, *(EVALUATED_METRICS if evaluate_first else ())]
        bound = ClipBound(prime_q=secure.prime_q, precision=secure.precision, num_workers=len(cohort))
        bits = secure.modulus_bits or choose_modulus_bits(
            bound, weighted=dp is None, metrics=bool(metrics),
            # A pod weights by its training rows, at most its whole table (the row count it registered).
            max_rows=max(self._row_counts.get(p, 0) for p in cohort),
        )
        return SecAggParams(
            prime_q=secure.prime_q, precision=secure.precision, num_workers=len(cohort),
            modulus_bits=bits,
            round=round_index,
            clip_norm=secure.clip_norm if dp is None else dp.clip_norm,
            metrics=metrics, weighted=dp is None,
            advert_timeout_s=secure.advert_timeout_s, stage_timeout_s=secure.stage_timeout_s,
        )

    async def _entries(self, cohort: list[str]) -> list[CohortEntry]:
        """The cohort as a task commits to it, with the schema hashes listed when the run began."""
        return await self.client.cohort(cohort, schema_hashes=self._schema_hashes)

    async def _submit(
        self, kind: TaskKind, cohort: list[CohortEntry], weights_ref: WeightsRef, *, secagg: SecAggParams | None,
        evaluate_first: bool = False,
    ) -> TaskPayload:
        task = build_task(
            modeller_id=self.client.key.key_id, cohort=cohort, kind=kind,
            model=self.plan.model, data=self.selection, weights=weights_ref, secagg=secagg,
            hyperparameters=self._hyperparameters(), dp=self.dp if kind == "train" else None,
            evaluate_first=evaluate_first,
        )
        task = self._with_strategy(task)
        await self.client.submit_task(task, cohort)
        return task

    def _with_strategy(self, task: TaskPayload) -> TaskPayload:
        """A train task with what the strategy asks of each pod's engine: FedProx's mu, SCAFFOLD's control."""
        if task.kind != "train":
            return task
        fields: dict[str, object] = {}
        if self.plan.strategy.proximal_mu is not None:
            fields["proximal_mu"] = self.plan.strategy.proximal_mu
        if self._control_ref is not None:
            fields["scaffold"] = ScaffoldParams(run_id=self._run_id, control=self._control_ref)
        return TaskPayload.model_validate(task.model_dump() | fields) if fields else task


def choose_modulus_bits(bound: ClipBound, *, weighted: bool, metrics: bool, max_rows: int) -> Literal[32, 64]:
    """32 when fixed_point's own checks say a 32-bit sum cannot wrap: every pod's weight (``max_rows`` when
    ``weighted``, else 1) encodes, and masked ``metrics`` fit; else 64."""
    try:
        plan_encoding(bound, modulus_bits=32, weight=max(max_rows, 1) if weighted else 1)
        if metrics:
            plan_metrics(bound, modulus_bits=32, weighted=weighted)
    except SecAggError:
        return 64
    return 32


def check_cohort(plan: FedAvgPlan) -> None:
    """Raise ModellerError, before any task is sent, for a cohort no round of ``plan`` can run on: a
    secure round needs at least ``min_pods`` distinct pods (and never fewer than 2, or one pod's update
    would be its sum), and the pods themselves refuse one under their owner's ``privacy.min_pods``."""
    pods = plan.pods
    if len(set(pods)) != len(pods):
        raise ModellerError(f"the cohort {pods} names a pod more than once; list each pod once")
    needed = max(plan.min_pods, 2)
    if plan.secure is not None and len(pods) < needed:
        raise ModellerError(
            f"secure aggregation needs at least {needed} pods (--min-pods; each pod's owner also sets "
            f"privacy.min_pods, 3 by default) and the cohort {pods} has {len(pods)}: add pods, or train with "
            "--plain on pods whose owners set privacy.require_secure_aggregation = false"
        )


def apply_mean_update(weights: Weights, mean_update: Weights) -> Weights:
    """The new global weights; a BatchNorm variance may dip below 0 only through clipping
    and rounding of its averaged delta, and is held at 0."""
    new = {name: weights[name] + mean_update[name] for name in weights}
    for name in new:
        if name.endswith("running_var"):
            np.maximum(new[name], 0.0, out=new[name])
    return new


def pooled_moments(stats: list[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Combine per-pod ``rows``/``nulls.c``/``mean.c``/``std.c`` (sample std) into the cohort's
    (mean, population std) per column; columns some pod lacks are left out."""
    columns = set.intersection(*({k.removeprefix("mean.") for k in m if k.startswith("mean.")} for m in stats))
    pooled: dict[str, tuple[float, float]] = {}
    for column in sorted(columns):
        count = total = total_sq = 0.0
        for m in stats:
            n = m["rows"] - m.get(f"nulls.{column}", 0.0)
            mean, std = m[f"mean.{column}"], m[f"std.{column}"]
            count += n
            total += n * mean
            total_sq += (n - 1) * std**2 + n * mean**2 if n > 1 else n * mean**2
        if count > 0:
            mean = total / count
            std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
            pooled[column] = (mean, std if std > 1e-12 else 1.0)
    return pooled


def _pod_metrics(metrics: Mapping[str, float], n_rows: int) -> PodMetrics:
    """Loss and accuracy of a model on a test split, from an evaluate result or a train result that
    evaluated first (NaN where absent)."""
    return PodMetrics(
        loss=float(metrics.get("test_loss", metrics.get("val_loss", float("nan")))),
        accuracy=float(metrics.get("test_accuracy", float("nan"))),
        n_rows=n_rows,
    )


def _reason(answer: VerifiedResult | str | None) -> str:
    if answer is None:
        return "no answer"
    if isinstance(answer, str):
        return f"refused: {answer}"
    return f"{answer.payload.status}: {answer.payload.reason}"
