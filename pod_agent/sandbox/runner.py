"""Parent side of the sandbox: run a job in a confined worker, at the pod's level, fail-closed.

Owns the runner's choices, made once at construction: the planned layers (probe.py), the
sandbox identity, the scratch root, whether tasks run as children of a fork server
(forkserver.py, where every layer holds for fork children: probe.fork_server_why_not) or on
workers from the warm pool (pool.py), and from them each entry's frozen ``LaunchSpec``; and a
job's course: a forked child (forked ahead where one is parked), or a parked pool worker, or one
built cold (process.py) when neither is to be had, taken when the job comes or, reserved
(``SandboxRunner.reserved``), while the caller still prepares the job's input, stage the job's
input into its slot (staging.py), run the task, then kill the worker's whole tree (shielded from
cancellation), keep its stderr for the operator when asked, and remove the slot. One worker serves
one task; the pool starts the next worker when this one is taken, the fork server forks the next
child as soon as this one is released.
Limits resolve in limits.py; what runs inside is the entry module's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pod_agent.errors import SandboxError
from pod_agent.sandbox.cgroup import detect_cgroups
from pod_agent.sandbox.forkserver import ForkedWorker, ForkServer
from pod_agent.sandbox.launch import Identity, python_ro_paths, resolve_identity
from pod_agent.sandbox.limits import EffectiveLimits, SandboxLimits, granted_ranks
from pod_agent.sandbox.pool import WarmPool
from pod_agent.sandbox.probe import (
    LayerReport,
    check_worker_package,
    fork_server_why_not,
    plan_layers,
    probe_layers,
)
from pod_agent.sandbox.process import LaunchSpec, WorkerProcess
from pod_agent.sandbox.staging import check_input, keep_stderr, move_back, new_slot, prepare_scratch, stage_input

if TYPE_CHECKING:
    from pod_agent.config import SandboxLimitsSection, SecuritySection

log = logging.getLogger("pod_agent.sandbox")

# Processes of the sandbox uid besides a task's own (bwrap's monitor and pid-1 init, a starting or
# parked worker with its threads), per worker that may live beside it; RLIMIT_NPROC counts them all.
_NPROC_SLACK_PER_WORKER = 8


@dataclass(frozen=True)
class SandboxJob:
    """One task for a worker. ``entry`` is a module with ``prepare()`` and ``serve(channel)``;
    ``entry_path`` is a directory to import it from (bound read-only), when it is not in the package.

    The runner hard-links (or, across filesystems, copies) ``input_dir`` into the worker's slot and
    makes it readable by the sandbox group. ``work_dir`` receives what the worker left in scratch
    only where scratch is a host directory (no namespaces); results travel in frames, never files.
    ``stderr_path`` receives the first process.STDERR_KEEP_BYTES of the worker's stderr (0600);
    without it the text is dropped, because a traceback can quote data values and logs are often shipped.
    """

    entry: str
    input_dir: Path
    work_dir: Path
    request: dict[str, Any]
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    entry_path: Path | None = None
    stderr_path: Path | None = None


@dataclass(frozen=True)
class SandboxOutcome:
    """A successful task: the child's result header and its safetensors payload (may be empty)."""

    header: dict[str, Any]
    payload: bytes


class Reservation:
    """A worker being taken for a job whose input is not ready yet (``SandboxRunner.reserved``).

    It holds the worker only: nothing of the job is in its slot and no request has been sent, so a
    reserved child sits as a parked one does, confined, under the pod's caps, waiting. ``run`` takes it
    once; a reservation ``run`` never took is ended when its block ends (``release``).
    """

    def __init__(
        self, key: tuple[str, str], limits: EffectiveLimits, taking: asyncio.Task[WorkerProcess | None] | None
    ) -> None:
        self.key = key
        self.limits = limits  # what the worker was taken under: a job under other limits must not run on it
        self._taking = taking
        self._taken = False

    async def take(self) -> tuple[bool, WorkerProcess | None]:
        """(True, the worker or None for a cold start) the first time; (False, None) after."""
        if self._taken or self._taking is None:
            return False, None
        # Shielded: a run cancelled meanwhile leaves the worker to release(), which ends it.
        worker = await asyncio.shield(self._taking)
        self._taken = True
        return True, worker

    async def release(self) -> None:
        """End a worker nobody ran a job on: its tree killed, its slot removed (a fork server's zygote
        then forks the next task's child ahead); a take still under way is cancelled."""
        taking, self._taking = self._taking, None
        if taking is None or self._taken:
            return
        if not taking.done():
            taking.cancel()
        await asyncio.wait({taking})
        if taking.cancelled() or taking.exception() is not None:
            return
        worker = taking.result()
        if worker is not None:
            await worker.discard()


class SandboxRunner:
    """Runs jobs in confined workers at the pod's configured level (fail-closed at construction).

    With ``sandbox_limits.warm_worker`` on, tasks run as children of a fork server wherever every
    layer holds for them (``fork_server``: False keeps to the warm pool, for comparisons and tests),
    else on workers from the warm pool; off, every task starts a worker cold.
    """

    def __init__(self, security: SecuritySection, limits: SandboxLimitsSection, gpu: bool = False, *,
                 scratch_root: Path | None = None, unsafe_disable_layers: frozenset[str] = frozenset(),
                 fork_server: bool = True, devices: int | str = 1) -> None:
        check_worker_package()
        reports = probe_layers(security)
        if unsafe_disable_layers:
            log.warning("sandbox layers disabled by unsafe_disable_layers: %s", sorted(unsafe_disable_layers))
            reports = [
                LayerReport(r.name, False, "disabled by unsafe_disable_layers")
                if r.name in unsafe_disable_layers
                else r
                for r in reports
            ]
        self.level = security.sandbox
        self.layers = plan_layers(self.level, reports)
        self.gpu = gpu
        self._pod_limits = limits
        # Data-parallel processes per training task (training.devices): limits.EffectiveLimits.ranks.
        self.ranks = granted_ranks(devices, gpu=gpu)
        self.identity = resolve_identity(security.sandbox_user) if "uid" in self.layers else Identity(
            "root" if os.geteuid() == 0 else str(os.geteuid()), os.geteuid(), os.getegid(), False)
        # Without the uid layer the fallback identity is the agent's own: nothing is chowned to it
        # and no worker switches to it.
        self._uid_identity = self.identity if "uid" in self.layers else None
        self._bwrap = shutil.which("bwrap") or "bwrap"
        self._cgroup_support = detect_cgroups() if "cgroup" in self.layers else None
        self._scratch = prepare_scratch(scratch_root or Path(tempfile.gettempdir()) / "pod-agent-sandbox",
                                        self._uid_identity)
        forks_why_not = fork_server_why_not(self.layers, reports) if fork_server else "fork_server=False"
        if gpu and forks_why_not is None:
            # CUDA does not survive fork once touched, and nothing proves a zygote never touched it.
            forks_why_not = "GPU tasks run on workers of their own (CUDA is not fork-safe)"
        if self.ranks > 1:
            # The fork server's children share its network namespace: one task's ranks could reach another's.
            forks_why_not = "training.devices > 1: each task's ranks need a network namespace of their own"
        self._forks = (ForkServer(limits=self._limits(SandboxLimits()), new_slot=self._slot)
                       if limits.warm_worker and forks_why_not is None else None)
        if limits.warm_worker and forks_why_not is not None:
            log.info("sandbox fork server not used (%s); tasks take workers from the warm pool", forks_why_not)
        depth = limits.warm_pool if limits.warm_worker and self._forks is None else 0
        self._pool = WarmPool(depth=depth, limits=self._limits(SandboxLimits()), new_slot=self._slot)
        self._closed = False
        self._specs: dict[tuple[str, Path | None], LaunchSpec] = {}

    @property
    def forks(self) -> bool:
        """Whether tasks run as fork-server children (else warm-pool or cold workers)."""
        return self._forks is not None

    def _slot(self) -> Path:
        return new_slot(self._scratch, self._uid_identity)

    def _limits(self, task: SandboxLimits) -> EffectiveLimits:
        return EffectiveLimits.resolve(self._pod_limits, task, ranks=self.ranks)

    def _spec(self, entry: str, entry_path: Path | None) -> LaunchSpec:
        # Made once per entry: the interpreter's paths are looked up on disk (~0.4 ms), three times a task.
        spec = self._specs.get((entry, entry_path))
        if spec is None:
            spec = self._specs[(entry, entry_path)] = self._new_spec(entry, entry_path)
        return spec

    def _new_spec(self, entry: str, entry_path: Path | None) -> LaunchSpec:
        # RLIMIT_NPROC counts every thread of the uid host-wide (all pods' tasks together), so it
        # is the fallback only: with a cgroup, pids.max caps each worker's tree exactly.
        nproc = "uid" in self.layers and "cgroup" not in self.layers
        return LaunchSpec(entry=entry, entry_path=entry_path, layers=frozenset(self.layers), bwrap=self._bwrap,
                          identity=self.identity, switch_to=self._uid_identity, gpu=self.gpu,
                          cgroup_support=self._cgroup_support, ro_paths=tuple(python_ro_paths(entry_path)),
                          nproc_slack=_NPROC_SLACK_PER_WORKER * (1 + self._pool.depth) if nproc else None)

    async def __aenter__(self) -> SandboxRunner:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def prewarm(self, entry: str, *, entry_path: Path | None = None) -> None:
        """Fill the warm pool for ``entry`` (``sandbox_limits.warm_pool`` workers, confined, past
        prepare(), waiting for a request); raises the start's error when none could be parked."""
        if self._closed:
            return
        if self._forks is not None:
            await self._forks.ensure(self._spec(entry, entry_path))
        else:
            await self._pool.fill(self._spec(entry, entry_path))

    async def wait_warm(self, entry: str, *, entry_path: Path | None = None) -> bool:
        """Wait for the warm workers (or the fork server and its child forked ahead, rehearsed) under way; True
        when one is ready for ``entry``."""
        if self._forks is not None:
            spec = self._spec(entry, entry_path)
            try:
                await self._forks.ensure(spec)
            except SandboxError:
                return False
            # A child that could not be forked ahead leaves the fork server ready all the same: tasks fork their own.
            await self._forks.wait_parked(spec)
            return True
        return await self._pool.wait(self._spec(entry, entry_path))

    @contextlib.asynccontextmanager
    async def reserved(self, entry: str, limits: SandboxLimits, *,
                       entry_path: Path | None = None) -> AsyncIterator[Reservation]:
        """Take the worker for a job of ``entry`` under ``limits`` now, in the background, while the block
        prepares the job's input; ``run(job, reservation=...)`` inside the block uses it. Only the worker is
        taken: the job's input reaches its slot, and its request the worker, in ``run``, as without a
        reservation. A worker the block did not run a job on (its input failed) is ended when the block
        ends, shielded from cancellation."""
        spec, effective = self._spec(entry, entry_path), self._limits(limits)
        taking = None if self._closed else asyncio.create_task(self._take(spec, effective),
                                                                 name=f"sandbox-reserve-{entry}")
        reservation = Reservation(spec.key, effective, taking)
        try:
            yield reservation
        finally:
            await asyncio.shield(reservation.release())

    async def run(self, job: SandboxJob, on_progress: Callable[[dict[str, Any]], None] | None = None, *,
                  reservation: Reservation | None = None) -> SandboxOutcome:
        """Run one job (on the ``reservation``'s worker when one is given, ``reserved`` for this job's entry
        and limits); raises SandboxError(reason=...) on timeout, kill, protocol violation or task failure."""
        if self._closed:
            raise SandboxError("closed", "the sandbox runner is shut down")
        if self.level == "none":
            log.warning("sandbox level 'none': this task runs UNCONFINED (development only; set "
                        "security.sandbox = 'strict' in pod.toml)")
        check_input(job.input_dir)
        if reservation is not None and reservation.key != self._spec(job.entry, job.entry_path).key:
            raise SandboxError("protocol", f"a worker reserved for {reservation.key[0]} cannot run {job.entry}")
        if reservation is not None and reservation.limits != self._limits(job.limits):
            raise SandboxError("protocol", f"a worker reserved under other limits cannot run {job.entry}: reserve "
                                           "it with the job's own limits")
        outcome = await self._attempt(job, on_progress, reservation)
        if outcome is None:
            # The child was forked ahead and died with its zygote before it said anything (the zygote was
            # killed after the child was parked): the task never ran, so it runs once on a fresh child.
            log.warning("sandbox child forked ahead was lost with its fork server; the task runs on a new one")
            outcome = await self._attempt(job, on_progress, None)
        if outcome is None:
            raise SandboxError("no_result", "the fork server ended before the task's child answered, twice")
        return outcome

    async def _take(self, spec: LaunchSpec, limits: EffectiveLimits) -> WorkerProcess | None:
        """A fork server's child (parked or not yet forked), a pool's parked worker, or None (start cold)."""
        # Data-parallel ranks meet over TCP, which the zygote's seccomp filter denies its children.
        forks = self._forks if limits.ranks == 1 else None
        return await self._forked(forks, spec, limits) if forks is not None else await self._pool.take(spec)

    async def _attempt(self, job: SandboxJob, on_progress: Callable[[dict[str, Any]], None] | None,
                       reservation: Reservation | None) -> SandboxOutcome | None:
        """One try at ``job``; None when its child was forked ahead and lost with its zygote, unheard."""
        limits = self._limits(job.limits)
        spec = self._spec(job.entry, job.entry_path)
        asked = time.monotonic()
        reserved, worker = (False, None) if reservation is None else await reservation.take()
        if not reserved:
            worker = await self._take(spec, limits)
        forked = isinstance(worker, ForkedWorker)
        kind = "cold" if worker is None else "pool" if not forked else (
            "parked" if worker.started else "fork")  # a child forked ahead (forkserver.py), or just now
        if worker is None:
            worker = WorkerProcess(spec, slot=self._slot(), limits=limits, warm=False)
        waited = time.monotonic() - asked
        heard = False

        def progress(event: dict[str, Any]) -> None:
            nonlocal heard
            heard = True
            if on_progress is not None:
                on_progress(event)

        try:
            await asyncio.to_thread(stage_input, job.input_dir, worker.slot, self._uid_identity)
            deadline = time.monotonic() + limits.wall_timeout_s
            if not worker.started:
                starting = time.monotonic()
                await worker.start(deadline=deadline)
                waited += time.monotonic() - starting
            # bench/rounds.py reads this line: how long the task waited for its worker.
            log.info("sandbox %s worker ready in %.3f s", kind, waited)
            header, payload = await worker.run_task(job.request, limits, deadline=deadline, on_progress=progress)
        except SandboxError as exc:
            if heard or exc.code != "no_result" or not isinstance(worker, ForkedWorker):
                raise
            if not await worker.lost_with_zygote():
                raise
            return None
        finally:
            # Shielded: a cancelled task (timeout upstream, agent shutdown) still has its tree killed.
            await asyncio.shield(self._finish(worker, job))
        return SandboxOutcome(header=header, payload=payload)

    async def _forked(self, forks: ForkServer, spec: LaunchSpec, limits: EffectiveLimits) -> WorkerProcess | None:
        """A child of the fork server (started now if it is not running), or None: the task starts cold."""
        try:
            return await forks.child(spec, limits)
        except SandboxError as exc:
            log.warning("sandbox fork server for %s could not start (%s); this task starts a worker cold",
                        spec.entry, exc.code)
            return None

    async def _finish(self, worker: WorkerProcess, job: SandboxJob) -> None:
        try:
            await worker.destroy()
        finally:
            await asyncio.to_thread(keep_stderr, bytes(worker.stderr_kept), worker.stderr_total, job.stderr_path)
            await asyncio.to_thread(move_back, worker.work_dir, job.work_dir)
            shutil.rmtree(worker.slot, ignore_errors=True)

    async def aclose(self) -> None:
        """Kill the warm pool's workers and the starts under way (agent shutdown)."""
        self._closed = True
        if self._forks is not None:
            await self._forks.aclose()
        await self._pool.aclose()
        shutil.rmtree(self._scratch, ignore_errors=True)


__all__ = ["Reservation", "SandboxJob", "SandboxOutcome", "SandboxRunner"]
