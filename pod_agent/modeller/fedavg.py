"""Federated averaging over R rounds, optionally under secure aggregation.

Owns the round loop on the modeller's side: publish the global weights, sign and
send a train task to the cohort, collect the pods' signed results, unmask or
average them, apply the mean update, then evaluate the new global model on every
pod (metrics only) and stop early on a patience rule. Under secure aggregation a
round is one SecAgg+ run (``secure_round.py``): pods that drop out at any stage are
left out inside the round, and the survivors' weighted mean comes back without a
retry. A round is never run again from the same weights: two sums that differ by one
pod would reveal its update, and the pods refuse it (``already_released``).

Differential privacy (``FedAvgPlan.dp``): ``plan_dp`` turns a target epsilon into the noise
multiplier for the planned rounds (or, given a multiplier, the rounds that fit), accounted as each
pod accounts it (``pod_agent.policy.budget``: one Gaussian release per round, RDP). The tasks carry
that request (``DpParams``) but each pod adds at least its owner's noise whatever they ask. Under DP
the secure sum is unweighted (so pods may split the noise variance), pods send no train metrics,
and evaluate and schema-stats tasks (exact releases a pod refuses unless its owner allows them) are
sent only when the plan says the owners allow them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
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
from pod_agent.modeller.tasks import build_task
from pod_agent.modeller.weights import initial_weights, publish_weights
from pod_agent.modeller.secure_round import run_secure_round
from pod_agent.policy.budget import epsilon, gaussian_event
from pod_agent.protocol.messages import (
    DataSelection,
    DpParams,
    Hyperparameters,
    ModelRef,
    SecAggParams,
    TaskKind,
    TaskPayload,
    WeightsRef,
)
from pod_agent.secagg import Layout, aggregate_masked, floating_tensors

_log = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class SecureSettings:
    """Parameter clipping in the seeds' form; ``num_workers`` is the cohort size of each round.

    The defaults bound every update value to |v| <= prime_q / (2 * precision * N): 4 for
    N = 2, 2.7 for N = 3, within a pod owner's default ceiling (privacy.max_clip_bound = 4),
    with 64 bits left for weighting each value by the pod's training rows.
    """

    prime_q: int = 2**20
    precision: int = 2**16
    modulus_bits: Literal[32, 64] = 64
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

    async def run(self, initial: Weights | None = None) -> FedAvgResult:
        """Train from ``initial`` for the planned rounds; by default from the model as a pod
        would build it (same seed) for the cohort's common datastructure."""
        plan = self.plan
        check_cohort(plan)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        listed = await self.client.registered(plan.pods, hint=SEE_POD_LIST)
        self._schema_hashes = {p: info.schema_hash for p, info in listed.items()}
        if plan.cohort_scaling and self._exact:
            self.selection = self.selection.model_copy(update={"scaling": await self._cohort_scaling()})
        if initial is None:
            initial = await asyncio.to_thread(self._initial_weights, [listed[p] for p in plan.pods])
        weights = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in sorted(initial.items())}
        report = RunReport()
        cohort = list(plan.pods)
        best_loss, stale = float("inf"), 0
        weights_ref: WeightsRef | None = None
        rounds = plan.rounds if self.dp is None else self.dp.rounds
        if rounds < plan.rounds:
            report.notes.append(f"{rounds} of {plan.rounds} rounds fit the privacy target")
        for round_index in range(1, rounds + 1):
            started = time.monotonic()
            if weights_ref is None:  # uploaded within round 1 so its time counts the upload
                weights_ref = await self._publish(weights, f"round{round_index}")
            cohort, mean_update = await self._train_round(weights, weights_ref, cohort, round_index)
            weights = apply_mean_update(weights, mean_update)
            # The upload evaluated here is what the next round trains from: one copy of each global model.
            weights_ref = await self._publish(weights, f"round{round_index}-result")
            label = f"round{round_index}-result"
            record = RoundRecord(
                round=round_index,
                pods=await self._evaluate(weights_ref, cohort, label=label) if self._exact else {},
                seconds=time.monotonic() - started,
            )
            report.rounds.append(record)
            if self.on_round is not None:
                self.on_round(record)
            overall = record.overall.loss
            if overall < best_loss - 1e-6:
                best_loss, stale = overall, 0
            else:
                stale += 1
            if plan.patience is not None and stale >= plan.patience:
                report.notes.append(f"stopped after round {round_index}: no better loss for {stale} rounds")
                break
        return FedAvgResult(weights=weights, report=report)

    def _initial_weights(self, cohort: list[PodInfo]) -> Weights:
        return initial_weights(self.plan.model, cohort, self.selection, self._hyperparameters())

    def _hyperparameters(self) -> Hyperparameters:
        plan = self.plan
        return Hyperparameters(
            epochs=plan.epochs_per_round, batch_size=plan.batch_size, learning_rate=plan.learning_rate, seed=plan.seed
        )

    # -- one round --------------------------------------------------------------------------------

    async def _cohort_scaling(self) -> dict[str, tuple[float, float]]:
        """Pooled (mean, std) of every continuous column, from the pods' schema-stats results."""
        stats = await schema_stats(
            self.client, self.plan.pods, timeout_s=self.plan.task_timeout_s, schema_hashes=self._schema_hashes
        )
        return pooled_moments(list(stats.values()))

    async def _train_round(
        self, weights: Weights, weights_ref: WeightsRef, cohort: list[str], round_index: int
    ) -> tuple[list[str], Weights]:
        """Train ``weights`` (uploaded as ``weights_ref``) on ``cohort`` and return (cohort that answered,
        mean update)."""
        secure = self.plan.secure
        if secure is not None:
            return await self._secure_round(weights, weights_ref, cohort, round_index, secure)
        task = await self._submit("train", cohort, weights_ref, secagg=None)
        answers = await self.client.wait_results(task.task_id, cohort, timeout_s=self.plan.task_timeout_s)
        ok = {pod: r for pod, r in answers.items() if isinstance(r, VerifiedResult) and r.payload.status == "done"}
        failed = sorted(set(cohort) - set(ok))
        if failed:
            reasons = {pod: _reason(answers.get(pod)) for pod in failed}
            _log.warning("round %d: pods %s failed (%s); averaging the others", round_index, failed, reasons)
            if not ok:
                raise ModellerError(f"round {round_index}: every pod failed: {reasons}")
        return [p for p in cohort if p in ok], await self._aggregate(task.task_id, ok, weights)

    async def _secure_round(
        self, weights: Weights, weights_ref: WeightsRef, cohort: list[str], round_index: int, secure: SecureSettings
    ) -> tuple[list[str], Weights]:
        """One SecAgg+ round: the survivors' weighted mean, with no retry whoever drops out."""
        secagg = await self._secagg(secure, cohort, round_index)
        task = await self._submit("train", cohort, weights_ref, secagg=secagg)
        layout = Layout.from_arrays(floating_tensors(weights), secagg.metrics)
        outcome = await run_secure_round(
            self.client, task, vector_size=layout.size, work_dir=self.work_dir, min_pods=self.plan.min_pods
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
        mean = {name: summed.mean[name].astype(np.float32) for name in weights}
        return list(outcome.survivors), mean

    async def evaluate(self, weights: Weights, cohort: list[str], *, label: str) -> dict[str, PodMetrics]:
        """Metrics of ``weights`` on each pod's test split (an evaluate task; no tensors come back)."""
        return await self._evaluate(await self._publish(weights, label), cohort, label=label)

    async def _evaluate(self, weights_ref: WeightsRef, cohort: list[str], *, label: str) -> dict[str, PodMetrics]:
        task = await self._submit("evaluate", cohort, weights_ref, secagg=None)
        answers = await self.client.wait_results(task.task_id, cohort, timeout_s=self.plan.task_timeout_s)
        metrics: dict[str, PodMetrics] = {}
        for pod, answer in sorted(answers.items()):
            if not isinstance(answer, VerifiedResult) or answer.payload.status != "done":
                _log.warning("%s: pod %s did not evaluate (%s)", label, pod, _reason(answer))
                continue
            m = answer.payload.metrics
            metrics[pod] = PodMetrics(
                loss=float(m.get("test_loss", m.get("val_loss", float("nan")))),
                accuracy=float(m.get("test_accuracy", m.get("test_acc", float("nan")))),
                n_rows=answer.payload.n_rows,
            )
        return metrics

    async def _aggregate(self, task_id: str, results: Mapping[str, VerifiedResult], weights: Weights) -> Weights:
        """The row-weighted mean of plain (unmasked) updates."""
        blobs: dict[str, Path] = {}
        for pod, result in sorted(results.items()):
            blob = result.payload.blob
            if blob is None:
                raise ModellerError(f"pod {pod} returned no update for task {task_id}")
            blobs[pod] = await self.client.download_blob(blob.sha256, self.work_dir / f"{task_id}.{pod}.blob")
        total = sum(results[pod].payload.n_rows for pod in blobs)
        mean = {name: np.zeros_like(a) for name, a in weights.items()}
        for pod, path in blobs.items():
            update = load_file(str(path))
            share = results[pod].payload.n_rows / total
            for name in mean:
                mean[name] += share * update[name]
        return mean

    # -- plumbing ----------------------------------------------------------------------------------

    async def _publish(self, weights: Weights, label: str) -> WeightsRef:
        return await publish_weights(self.client, weights, self.work_dir / f"global-{label}.safetensors")

    async def _secagg(self, secure: SecureSettings, cohort: list[str], round_index: int) -> SecAggParams:
        # Under DP the pods clip before their noise, send no metrics, and the sum is unweighted so that
        # each pod's share of the noise counts the same (a pod splits the variance only then).
        dp = self.dp
        return SecAggParams(
            prime_q=secure.prime_q, precision=secure.precision, num_workers=len(cohort),
            modulus_bits=secure.modulus_bits,
            round=round_index, participants=await self.client.participants(cohort),
            clip_norm=secure.clip_norm if dp is None else dp.clip_norm,
            metrics=list(secure.metrics) if dp is None else [], weighted=dp is None,
            advert_timeout_s=secure.advert_timeout_s, stage_timeout_s=secure.stage_timeout_s,
        )

    async def _submit(
        self, kind: TaskKind, cohort: list[str], weights_ref: WeightsRef, *, secagg: SecAggParams | None
    ) -> TaskPayload:
        task = build_task(
            modeller_id=self.client.key.key_id, pods=cohort, kind=kind,
            schema_hash=self._schema_hashes[cohort[0]],
            pod_schema_hashes={p: self._schema_hashes[p] for p in cohort},
            model=self.plan.model, data=self.selection, weights=weights_ref, secagg=secagg,
            hyperparameters=self._hyperparameters(), dp=self.dp if kind == "train" else None,
        )
        await self.client.submit_task(task)
        return task


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


def _reason(answer: VerifiedResult | str | None) -> str:
    if answer is None:
        return "no answer"
    if isinstance(answer, str):
        return f"refused: {answer}"
    return f"{answer.payload.status}: {answer.payload.reason}"
