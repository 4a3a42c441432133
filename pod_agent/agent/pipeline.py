"""What the daemon does with one accepted task, behind one call: ``TaskPipeline.run``.

Owns the dispatch by task kind and the shape of its output (metrics, row count,
an optional tensor blob file) that the daemon signs into a ResultPayload.
``schema-stats`` runs here (``stats.py``; aggregate facts only). ``train``,
``evaluate`` and ``predict`` go through the sandbox (pod_agent.sandbox),
training (pod_agent.training) and secure aggregation (pod_agent.secagg), under the
signer's privacy floor (the prepared input reused from ``data.input_cache`` when an
earlier task prepared the same selection of the same file, else prepared from the pod's
column store, which ``start`` builds in a thread) and, for a signer with a dp budget,
the noise ``policy.budget`` plans (added here to the checked update, outside the sandbox, before it is encoded or
masked), and for a SCAFFOLD task the pod's control variate (``scaffold.py``; its change rides in the update):
the prepared splits' exact row counts and steps are checked here before the sandbox starts (its worker is
reserved from the task's acceptance, while the input is prepared, and gets the input and the request only after
these checks), and what comes back leaves only as ``egress.py`` rebuilds it (vocabulary metrics, rounded;
progress from typed fields). Failures carry a fixed code (``policy.FailureCode``) that may leave the host;
details stay in the local log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from pod_agent.agent.egress import ProgressRebuilder, reported_metrics
from pod_agent.agent.scaffold import ScaffoldInput, extend_update, keep_scaffold, prepare_scaffold
from pod_agent.agent.secure_round import PodRoundContext, RoundLink, check_unreleased, run_secure_round
from pod_agent.agent.stats import schema_stats
from pod_agent.config import PodSettings
from pod_agent.data import ColumnStore, Datasource, Schema, TaskInputCache
from pod_agent.errors import SandboxError, TaskFailed
from pod_agent.policy import (
    FailureCode,
    NoisePlan,
    PrivacyFloor,
    check_fetched_source,
    effective_steps,
    modeller_keys,
    noise_plan,
    used_splits,
)
from pod_agent.protocol import BlobRef, ProgressEvent, TaskPayload, WeightsRef
from pod_agent.training import parse_progress

_log = logging.getLogger(__name__)

ProgressSink = Callable[[ProgressEvent], None]

# The module the sandbox runs for train/evaluate/predict (pod_agent.training.worker).
TRAINING_ENTRY = "pod_agent.training.worker"
# Prepared task inputs kept on disk for the next round's tasks: a few selections of a large table.
INPUT_CACHE_BYTES = 2 << 30
# The table's columns encoded once (data.ColumnStore, 8 bytes a cell): 500M cells; a larger table's tasks read it.
COLUMN_STORE_BYTES = 4 << 30


class HubFetcher(RoundLink, Protocol):
    """What the pipeline needs from the hub: model source by reference and blobs by sha256."""

    async def model_source(self, name: str, version: str) -> str: ...

    async def blob(self, sha256: str, dest: Path, *, size_bytes: int) -> None: ...


@dataclass(frozen=True)
class PipelineOutput:
    """What a finished task hands back: signed into a ResultPayload by the daemon."""

    metrics: dict[str, float]
    n_rows: int
    blob_path: Path | None = None
    blob: BlobRef | None = None


class TaskPipeline:
    """Runs accepted tasks; one instance per daemon.

    The sandbox runner is built on first need, or by ``start()`` when a warm worker
    is configured (fail-closed: when the configured level is unavailable, sandboxed
    kinds fail with ``sandbox_unavailable``); ``aclose()`` ends it. ``schema-stats``
    needs neither.
    """

    def __init__(
        self,
        *,
        settings: PodSettings,
        datasource: Datasource,
        schema: Schema,
        work_root: Path,
        outbox_dir: Path,
        secure_round: PodRoundContext,
    ) -> None:
        self._settings = settings
        self._datasource = datasource
        self._schema = schema
        self._work_root = work_root
        self._outbox_dir = outbox_dir
        self._secure_round = secure_round
        self._modellers = modeller_keys(settings.security.modellers)  # every key a modeller signs with
        self._columns = ColumnStore(settings.pod.state_dir / "column-store", max_bytes=COLUMN_STORE_BYTES)
        self._inputs = TaskInputCache(
            settings.pod.state_dir / "input-cache", max_bytes=INPUT_CACHE_BYTES, columns=self._columns
        )
        # Set by the daemon once its hub connection exists, which is after the pipeline is built.
        self.fetcher: HubFetcher | None = None
        self._runner: Any = None
        self._runner_error: SandboxError | None = None
        self._warming: asyncio.Task[None] | None = None
        self._encoding: asyncio.Task[object] | None = None
        self._runner_lock = asyncio.Lock()

    def use_policy(self, settings: PodSettings, secure_round: PodRoundContext) -> None:
        """The owner's policy reloaded (SIGHUP, ``Agent.reload_policy``): tasks started from now on read it;
        a running task keeps what it already read. The sandbox runner is not rebuilt (its settings need a restart)."""
        self._settings = settings
        self._modellers = modeller_keys(settings.security.modellers)
        self._secure_round = secure_round

    async def start(self) -> None:
        """Build the column store (or open the one kept) in a thread, so that no task reads and encodes the table
        (one arriving before it is built waits for it: building it again, or reading the table in the task, would
        cost as much while competing with it); with ``sandbox_limits.warm_worker``, build the runner and park a
        warm worker, in the background."""
        self._encoding = asyncio.create_task(
            asyncio.to_thread(self._columns.table, self._datasource, self._schema), name="column-store"
        )
        if self._settings.sandbox_limits.warm_worker:
            self._warming = asyncio.create_task(self._warm_up(), name="sandbox-warm-up")

    async def _warm_up(self) -> None:
        runner = await self._ensure_runner()
        if runner is None:
            return
        try:
            await runner.prewarm(TRAINING_ENTRY)
        except SandboxError as exc:
            _log.warning("warm worker could not start (%s); the first task starts cold", exc.code)

    async def _ensure_runner(self) -> Any:
        """The sandbox runner, built once (it probes the layers); None when the level cannot be had."""
        async with self._runner_lock:
            if self._runner is None and self._runner_error is None:
                from pod_agent.sandbox import SandboxRunner

                gpu = self._settings.training.accelerator != "cpu" and Path("/dev/nvidiactl").exists()
                try:
                    self._runner = await asyncio.to_thread(
                        SandboxRunner, self._settings.security, self._settings.sandbox_limits, gpu,
                        devices=self._settings.training.devices,
                    )
                except SandboxError as exc:
                    self._runner_error = exc
                    _log.warning("sandbox unavailable (%s): train/evaluate/predict tasks will fail", exc.code)
            return self._runner

    async def discard_leftovers(self) -> None:
        """Remove task inputs a killed agent left behind: they hold prepared rows of the table, and no
        task is running yet (an interrupted task prepares its input again, or is failed)."""
        await asyncio.to_thread(shutil.rmtree, self._work_root, ignore_errors=True)

    async def aclose(self) -> None:
        self._columns.close()  # a build in progress stops at its next record batch rather than hold up the exit
        for background in (self._encoding, self._warming):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        if self._runner is not None:
            await self._runner.aclose()

    async def run(self, task: TaskPayload, *, floor: PrivacyFloor, on_progress: ProgressSink) -> PipelineOutput:
        """Run ``task`` (already verified and authorised) under the signer's privacy ``floor``;
        raise TaskFailed or a typed error on failure."""
        on_progress(ProgressEvent(task_id=task.task_id, stage="preparing"))
        if task.kind == "schema-stats":
            return await self._schema_stats(floor)
        return await self._sandboxed(task, floor, on_progress)

    async def _schema_stats(self, floor: PrivacyFloor) -> PipelineOutput:
        metrics, rows = await asyncio.to_thread(schema_stats, self._datasource, self._schema)
        if rows < floor.min_rows:
            raise TaskFailed(
                FailureCode.TOO_FEW_ROWS.value, f"table has {rows} rows, under min_rows = {floor.min_rows}"
            )
        return PipelineOutput(metrics=metrics, n_rows=rows)

    # -- train / evaluate / predict: data -> sandbox(training.worker) -> contract -> secagg --

    async def _sandboxed(self, task: TaskPayload, floor: PrivacyFloor, on_progress: ProgressSink) -> PipelineOutput:
        clock = _StageClock()  # from the task's acceptance: bench/rounds.py reads accepted -> first step
        if await self._ensure_runner() is None:
            raise TaskFailed(FailureCode.SANDBOX_UNAVAILABLE.value, str(self._runner_error))
        if task.secagg is not None and task.kind == "train":
            # Before training: a second round from the same weights would be refused at release anyway.
            await asyncio.to_thread(check_unreleased, self._secure_round.state, task)
        work = self._work_root / task.task_id
        await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
        input_dir = work / "input"
        # The task's prepared rows live here: the agent's alone (the worker reads hard links in its own slot).
        await asyncio.to_thread(_private_dir, work)
        await asyncio.to_thread(input_dir.mkdir)
        try:
            return await self._sandboxed_in(task, floor, work, input_dir, on_progress, clock)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)

    async def _sandboxed_in(
        self, task: TaskPayload, floor: PrivacyFloor, work: Path, input_dir: Path, on_progress: ProgressSink,
        clock: _StageClock,
    ) -> PipelineOutput:
        output = await self._sandboxed_stages(task, floor, work, input_dir, on_progress, clock)
        clock.mark("result")
        _log.info("%s task stages: %s", task.kind, clock.line())
        return output

    async def _sandboxed_stages(
        self, task: TaskPayload, floor: PrivacyFloor, work: Path, input_dir: Path, on_progress: ProgressSink,
        clock: _StageClock,
    ) -> PipelineOutput:
        from pod_agent.sandbox import SandboxJob, SandboxLimits
        from pod_agent.training import TrainerSettings, WorkerPrivacy, WorkerRequest, check_result, reported_rows

        if task.model is None or task.data is None:
            raise TaskFailed(
                FailureCode.INTERNAL_ERROR.value, f"a verified {task.kind} task lacks a model and a data selection"
            )
        limits = SandboxLimits(wall_timeout_s=task.limits.wall_timeout_s, memory_mb=task.limits.memory_mb)
        # The worker is taken while the input is prepared (a child still being forked ahead is waited for
        # meanwhile); only taken: the input reaches its slot, and the request the worker, in run(), after the
        # checks below. A worker no job ran on (the input or a check failed) is ended with the block.
        async with self._runner.reserved(TRAINING_ENTRY, limits) as reservation:
            given = await self._task_input(task, work, input_dir)
            prepared, expected, scaffold = given.prepared, given.expected, given.scaffold
            # The agent's own counts of the prepared splits: checked here, and the only counts that leave.
            split_rows = cast(Mapping[str, int], prepared.datastructure["n_rows"])
            steps, steps_per_epoch = _check_prepared(task, floor, split_rows)
            settings = self._settings
            request = WorkerRequest(
                task=task,
                datastructure=prepared.datastructure,
                trainer=TrainerSettings(
                    # The ranks the runner granted its workers ("auto" resolved), not the setting as written.
                    accelerator=settings.training.accelerator, devices=self._runner.ranks,
                    seed=task.hyperparameters.seed,
                ),
                privacy=WorkerPrivacy(min_rows=floor.min_rows),
                public_schema=self._schema.public(settings.privacy.share_categories),
            ).model_dump(mode="json")
            keep_stderr = settings.security.keep_sandbox_stderr
            job = SandboxJob(
                entry=TRAINING_ENTRY, input_dir=input_dir, work_dir=work / "work", request=request, limits=limits,
                stderr_path=settings.pod.state_dir / "sandbox-stderr" / f"{task.task_id}.log" if keep_stderr else None,
            )
            on_progress(ProgressEvent(task_id=task.task_id, stage="training"))
            progress = ProgressRebuilder(
                task_id=task.task_id, total_steps=steps if task.kind == "train" else 0,
                steps_per_epoch=steps_per_epoch,
            )
            clock.mark("input")
            outcome = await self._runner.run(
                job, on_progress=lambda raw: _forward(progress, raw, on_progress, clock), reservation=reservation,
            )
        clock.mark("sandbox")
        on_progress(ProgressEvent(task_id=task.task_id, stage="validating"))
        checked = await asyncio.to_thread(
            check_result, outcome, task=task, expected=expected,
            rows=reported_rows(task, split_rows),
            max_bytes=settings.sandbox_limits.max_output_mb << 20, min_rows=floor.min_rows,
            max_prediction_columns=settings.privacy.max_prediction_columns,
            allow_half_precision=settings.privacy.allow_half_precision,
        )
        clock.mark("checked")
        metrics = reported_metrics(checked.metrics, digits=floor.metric_digits, max_metrics=floor.max_metrics)
        if not checked.arrays:
            return PipelineOutput(metrics=metrics, n_rows=checked.n_rows)
        if scaffold is None:
            return await self._released(task, checked.arrays, checked.n_rows, metrics, clock)
        extended = await asyncio.to_thread(
            extend_update, scaffold, checked.arrays, steps=steps, learning_rate=task.hyperparameters.learning_rate
        )
        output = await self._released(task, extended.arrays, checked.n_rows, metrics, clock)
        await asyncio.to_thread(keep_scaffold, extended, state=self._secure_round.state)
        return output

    async def _released(
        self, task: TaskPayload, arrays: dict[str, Any], n_rows: int, metrics: dict[str, float], clock: _StageClock
    ) -> PipelineOutput:
        """The checked update noised (under a dp budget), then masked in the secure round or encoded plain."""
        plan = self._noise_plan(task)
        if plan is not None:
            task, arrays = await asyncio.to_thread(_noised, task, arrays, plan)
            # Train metrics are exact functions of the rows, outside the accounted release: they stay here.
            metrics = {}
        if task.secagg is not None:
            return await self._secure_round_output(task, arrays, n_rows, metrics, clock)
        data, encoding = await asyncio.to_thread(self._encode, arrays)
        clock.mark("encoded")
        blob_path = self._outbox_dir / f"{task.task_id}.blob"
        await asyncio.to_thread(blob_path.write_bytes, data)
        ref = BlobRef(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), encoding=encoding)
        return PipelineOutput(metrics=metrics, n_rows=n_rows, blob_path=blob_path, blob=ref)

    async def _task_input(self, task: TaskPayload, work: Path, input_dir: Path) -> _TaskInput:
        """Everything a sandboxed task reads, in ``input_dir``. The rows are prepared in a thread while the
        model source, weights and control variate are fetched, so the hub's round trips cost no time beside
        a preparation; a failure is the first one in the order model, weights, control variate, rows."""
        from pod_agent.training import expected_from_safetensors, safetensors_head

        if task.data is None:
            raise TaskFailed(FailureCode.INTERNAL_ERROR.value, f"a verified {task.kind} task lacks a data selection")
        preparing = asyncio.ensure_future(asyncio.to_thread(
            self._inputs.prepare, self._datasource, self._schema, task.data, input_dir,
            share_categories=self._settings.privacy.share_categories,
            # Workers under the sandbox's own uid cannot write the agent's 0400 entries: hashed once, not per task.
            workers_can_write="uid" not in self._runner.layers,
        ))
        try:
            await self._write_model(task, input_dir)
            expected = None
            if task.weights is not None:
                weights = input_dir / "weights.safetensors"
                await self._fetch_blob(task.weights, weights)
                expected = await asyncio.to_thread(lambda: expected_from_safetensors(safetensors_head(weights)))
            scaffold = await self._scaffold_input(task, work, input_dir, expected)
        except BaseException:
            # The preparation writes into input_dir, which goes when the task ends: it ends first. Its own
            # failure, if any, is not the task's: this one came first in the order above.
            await asyncio.wait({preparing})
            if not preparing.cancelled():
                preparing.exception()
            raise
        return _TaskInput(prepared=await preparing, expected=expected, scaffold=scaffold)

    async def _scaffold_input(
        self, task: TaskPayload, work: Path, input_dir: Path, expected: Mapping[str, Any] | None
    ) -> ScaffoldInput | None:
        """For a SCAFFOLD task: the server's control variate fetched (pinned like the weights) and checked, this
        pod's own read from the state, and the engine's correction written into the input."""
        if task.scaffold is None:
            return None
        if expected is None:
            raise TaskFailed(FailureCode.INTERNAL_ERROR.value, "a verified SCAFFOLD task lacks pinned weights")
        control = work / "control.safetensors"
        await self._fetch_blob(task.scaffold.control, control)
        shapes = {name: tuple(spec.shape) for name, spec in expected.items()}
        return await asyncio.to_thread(
            prepare_scaffold, task.scaffold, modeller_id=task.modeller_id, control_file=control, expected=shapes,
            state=self._secure_round.state, input_dir=input_dir,
        )

    def _noise_plan(self, task: TaskPayload) -> NoisePlan | None:
        """The noise for ``task`` under the signer's dp budget as configured now (None: no budget)."""
        modeller = self._modellers.get(task.modeller_id)
        if modeller is None:
            raise TaskFailed(FailureCode.UNKNOWN_SIGNER.value, "the task's modeller left security.modellers")
        survivors = 1
        if task.secagg is not None and task.cohort.size > 1:
            from pod_agent.secagg import default_degree

            # This pod unmasks only for a sum holding at least t pods of its neighbourhood, itself included:
            # t = floor((k + 1) / 2) + 1 for the degree k of the signed cohort's size (secagg.graph).
            survivors = (default_degree(task.cohort.size) + 1) // 2 + 1
        return noise_plan(self._settings.privacy, modeller, task, min_survivors=survivors)

    @staticmethod
    def _encode(arrays: dict[str, Any]) -> tuple[bytes, Any]:
        """The plain update as safetensors (no secure aggregation)."""
        from safetensors.numpy import save

        return save(dict(sorted(arrays.items()))), "safetensors"

    async def _secure_round_output(
        self, task: TaskPayload, arrays: dict[str, Any], n_rows: int, metrics: Mapping[str, float],
        clock: _StageClock,
    ) -> PipelineOutput:
        """The SecAgg+ round (``secure_round.py``); row count and metrics travel only inside the masked
        vector, so the result's clear ``metrics`` are empty and its ``n_rows`` 0. How many values the
        clip bound changed is a per-pod fact the model controls: it stays in the local log."""
        if self.fetcher is None:
            raise TaskFailed(FailureCode.ROUND_TIMEOUT.value, "no hub connection for the secure round")
        round_output = await run_secure_round(
            task, arrays, n_rows=n_rows, metrics=metrics, ctx=self._secure_round, link=self.fetcher,
            blob_path=self._outbox_dir / f"{task.task_id}.blob", on_stage=clock.mark,
        )
        _log.info("secure update: %d values clipped to the task's bound", round_output.n_clipped)
        return PipelineOutput(metrics={}, n_rows=0, blob_path=round_output.blob_path, blob=round_output.blob)

    async def _write_model(self, task: TaskPayload, input_dir: Path) -> None:
        """Put the model source or spec into the input (source by hub reference checked against its hash)."""
        model = task.model
        if model is None:
            return
        if model.spec is not None:
            from pod_agent.protocol import canonical_json

            await asyncio.to_thread((input_dir / "spec.json").write_bytes, canonical_json(model.spec))
            return
        if model.source is not None:
            await asyncio.to_thread((input_dir / "model.py").write_text, model.source, encoding="utf-8")
            return
        if self.fetcher is None or model.hub_ref is None or "@" not in model.hub_ref:
            raise TaskFailed(FailureCode.SOURCE_MISSING.value, f"model reference {model.hub_ref!r} cannot be fetched")
        name, version = model.hub_ref.split("@", 1)
        source = await self.fetcher.model_source(name, version)
        check_fetched_source(model, source)
        await asyncio.to_thread((input_dir / "model.py").write_text, source, encoding="utf-8")

    async def _fetch_blob(self, ref: WeightsRef, dest: Path) -> None:
        """The pinned weights, read no further than their signed size."""
        if self.fetcher is None:
            raise TaskFailed(FailureCode.WEIGHTS_UNAVAILABLE.value, "no hub connection to fetch the task's weights")
        await self.fetcher.blob(ref.sha256, dest, size_bytes=ref.size_bytes)


@dataclass(frozen=True)
class _TaskInput:
    """A sandboxed task's input as the agent wrote it: the prepared rows (``data.TaskInputCache.prepare``'s
    answer), the pinned weights' expected tensors (None without weights) and the SCAFFOLD input (None
    without SCAFFOLD)."""

    prepared: Any
    expected: Mapping[str, Any] | None
    scaffold: ScaffoldInput | None


class _StageClock:
    """Where a sandboxed task's time went, for the local log (``bench/rounds.py`` reads it): seconds from
    the task's acceptance by the pipeline to each stage's end; a stage marks once (its first time).

    ``input``: model, weights and prepared rows in place; ``first_step``: the worker's first training step
    began (train only; it includes waiting for a worker); ``sandbox``: the worker's answer is in;
    ``checked``: the contract's checks passed; ``encoded``: the update encoded (fixed point and its clip in a
    secure round, safetensors otherwise); in a secure round (``secure_round.py``) ``masking`` (begun, once the
    cohort's keys and shares are in), ``masked`` and ``uploaded`` (release recorded, masked vector sent);
    ``result``: the task's output ready (a secure round's wait for the other pods to unmask included).
    """

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._marks: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        self._marks.setdefault(stage, time.monotonic() - self._started)

    def line(self) -> str:
        return " ".join(f"{stage}={seconds:.3f}s" for stage, seconds in self._marks.items())


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True)
    path.chmod(0o700)  # mkdir's mode is masked by the umask; this is not


def _check_prepared(task: TaskPayload, floor: PrivacyFloor, rows: Mapping[str, int]) -> tuple[int, int]:
    """The exact rows of each split the task uses against the floor; returns the task's effective steps
    and the steps of one epoch.

    The verifier judged estimates from the registered row count; these are the prepared input's counts.
    """
    if task.data is None:
        return 0, 1
    for name in used_splits(task.kind, task.data.split):
        if rows[name] < floor.min_rows:
            raise TaskFailed(
                FailureCode.TOO_FEW_ROWS.value,
                f"split {name!r} holds {rows[name]} rows, under min_rows {floor.min_rows}",
            )
    steps = effective_steps(task.hyperparameters, rows["train"])
    if task.kind == "train" and steps > floor.max_effective_steps:
        raise TaskFailed(
            FailureCode.TOO_MANY_STEPS.value,
            f"{steps} optimiser steps on the prepared input, over max_effective_steps {floor.max_effective_steps}",
        )
    return steps, max(1, math.ceil(rows["train"] / task.hyperparameters.batch_size))


def _noised(task: TaskPayload, arrays: Mapping[str, Any], plan: NoisePlan) -> tuple[TaskPayload, dict[str, Any]]:
    """The update clipped to the plan's L2 norm plus its Gaussian noise, and the task to encode it with.

    Integer buffers (a step counter) are not noised: they count steps the task fixed, not rows. Under
    secure aggregation the encoder is given no clip_norm: the update was clipped before the noise, and
    scaling the noised update again would shrink this pod's noise share by a data-dependent factor.
    """
    from pod_agent.secagg import ClipBound, check_share_range, floating_tensors, noise_update

    floats = floating_tensors(arrays)
    if task.secagg is not None and plan.honest_pods > 1:
        check_share_range(
            bound=ClipBound.from_params(task.secagg).bound, clip_norm=plan.clip_norm, share_std=plan.share_std,
            n_values=sum(int(a.size) for a in floats.values()),
        )
    noised = noise_update(floats, clip_norm=plan.clip_norm, std=plan.share_std)
    _log.info(
        "dp: update norm %.4g scaled by %.4g; noise std %.4g per value (z=%g, clip %g, share 1/%d of the variance)",
        noised.norm, noised.scale, noised.std, plan.noise_multiplier, plan.clip_norm, plan.honest_pods,
    )
    if task.secagg is not None:
        task = task.model_copy(update={"secagg": task.secagg.model_copy(update={"clip_norm": None})})
    return task, {**arrays, **noised.arrays}


def _forward(rebuilder: ProgressRebuilder, raw: object, sink: ProgressSink, clock: _StageClock) -> None:
    """Sandbox progress (untrusted) -> the event the hub may see, rebuilt from typed fields; else nothing."""
    progress = parse_progress(raw)
    if progress is None:
        return
    if progress.stage == "training":
        clock.mark("first_step")
    for event in rebuilder.rebuild(progress):
        sink(event)
