"""Parent side of the sandbox: launch a confined worker, trade frames, end it.

Owns the worker's life: file access for the sandbox uid, the bwrap or direct
command (launch.py), the cgroup, the hand-off of rlimits/seccomp/Landlock to
the bootstrap in the ``go`` frame, the frame sequence and its caps, the
stderr drain (capped; only its size is logged, the text goes to the job's
``stderr_path`` when the operator asks for it, never to the hub), timeouts, killing the
whole tree, naming the cap that ended a worker (``SandboxError`` codes
``memory_exceeded``, ``wall_timeout``, ``cpu_time_exceeded``, ``file_size_exceeded``,
``output_exceeded``, ``frame_too_large``; a worker's own word comes as ``task_failed``
with the word as detail, unless the cgroup counted an OOM kill, which outranks whatever
the worker says), and the warm worker (one pre-started worker per entry, past
``prepare()`` and confined before it sees any task input; one task each).
probe.py finds the layers; what runs inside is the entry module's business.

Each worker gets a slot (``<scratch>/runner-*/slot-*``, root-owned, 0711) with
``input`` (root:sandbox-group, 0750; the job's input hard-linked in) and
``work``: bwrap resolves bind sources by path as the sandbox uid, so the job's
own directories, typically under a 0700 state dir, cannot be bound directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pod_agent.errors import SandboxError
from pod_agent.sandbox.cgroup import MemoryEvents, TaskCgroup, descendants, detect_cgroups
from pod_agent.sandbox.confine import ConfinePlan
from pod_agent.sandbox.frames import Frame, check_safetensors, encode_frame, read_frame_async
from pod_agent.sandbox.launch import (
    SANDBOX_INPUT,
    SANDBOX_WORK,
    Identity,
    bootstrap_argv,
    bwrap_argv,
    landlock_paths,
    python_ro_paths,
    resolve_identity,
    worker_env,
)
from pod_agent.sandbox.probe import LayerReport, check_worker_package, plan_layers, probe_layers

if TYPE_CHECKING:
    from pod_agent.config.settings import SandboxLimitsSection, SecuritySection

log = logging.getLogger("pod_agent.sandbox")

# stderr kept for the job's stderr file; the rest is counted and dropped.
STDERR_KEEP_BYTES = 64 * 1024
# Kept stderr files are for debugging recent tasks; older ones go so the state dir cannot fill up.
KEPT_STDERR_FILES = 100
# More stderr/stdout than this is a flood: the task is killed ("output_exceeded").
MAX_LOG_BYTES = 8 * 1024 * 1024
# Start-up (bwrap + interpreter) and a warm worker's prepare() (torch + Lightning imports).
START_TIMEOUT_S = 30.0
WARM_PREPARE_TIMEOUT_S = 300.0
WARM_PREPARE_CPU_S = 600
# After a kill, how long the pipes may stay open before we call the tree a survivor.
REAP_TIMEOUT_S = 5.0
# bwrap's monitor, its pid-1 init and a parked warm worker also count against RLIMIT_NPROC (per uid).
_NPROC_SLACK = 8
_EXIT_SIGNAL_BASE = 128


@dataclass(frozen=True)
class SandboxLimits:
    """What one task asks for; None means the pod's limit. A task can ask for less, never more."""

    wall_timeout_s: float | None = None
    cpu_time_s: int | None = None
    memory_mb: int | None = None
    max_processes: int | None = None
    max_open_files: int | None = None
    max_file_mb: int | None = None
    max_output_mb: int | None = None


@dataclass(frozen=True)
class EffectiveLimits:
    wall_timeout_s: float
    cpu_time_s: int
    memory_mb: int
    max_processes: int
    max_open_files: int
    max_file_mb: int
    max_output_mb: int

    @classmethod
    def resolve(cls, pod: "SandboxLimitsSection", task: SandboxLimits) -> "EffectiveLimits":
        def low(name: str) -> Any:
            mine, theirs = getattr(pod, name), getattr(task, name)
            return mine if theirs is None else min(mine, theirs)

        return cls(**{name: low(name) for name in cls.__dataclass_fields__})

    def rlimits(self, *, nproc: bool) -> dict[str, int]:
        limits = {"data": self.memory_mb << 20, "nofile": self.max_open_files, "fsize": self.max_file_mb << 20,
                  "core": 0}
        if nproc:
            limits["nproc"] = self.max_processes + _NPROC_SLACK
        return limits


@dataclass(frozen=True)
class SandboxJob:
    """One task for a worker. ``entry`` is a module with ``prepare()`` and ``serve(channel)``;
    ``entry_path`` is a directory to import it from (bound read-only), when it is not in the package.

    The runner hard-links (or, across filesystems, copies) ``input_dir`` into the worker's slot and
    makes it readable by the sandbox group. ``work_dir`` receives what the worker left in scratch
    only where scratch is a host directory (no namespaces); results travel in frames, never files.
    ``stderr_path`` receives the first STDERR_KEEP_BYTES of the worker's stderr (0600); without it
    the text is dropped, because a traceback can quote data values and logs are often shipped.
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


def _exit_reason(returncode: int | None, *, namespaced: bool, memory: MemoryEvents | None) -> str:
    """Why a worker ended without an answer, from its exit status and its cgroup's memory counts."""
    if memory is not None and memory.oom_kills:
        return "memory_exceeded"
    if returncode is None:
        return "no_result"
    signo = -returncode if returncode < 0 else (returncode - _EXIT_SIGNAL_BASE if namespaced else 0)
    if signo == signal.SIGXCPU:
        return "cpu_time_exceeded"
    if signo == signal.SIGXFSZ:
        return "file_size_exceeded"
    if signo == signal.SIGKILL:
        # Where the kernel does not count OOM kills (cgroup v1 before 4.13), a SIGKILL in a group
        # that reached its cap is the OOM killer's as far as anyone can tell.
        uncounted_oom = memory is not None and memory.oom_kills is None and memory.cap_hits > 0
        return "memory_exceeded" if uncounted_oom else "killed"
    return "no_result"


def _grant_input(input_dir: Path, identity: Identity | None) -> None:
    """Let the sandbox uid's group read the input tree, and nobody else: it holds the pod's prepared rows.

    Nobody gains write access; other local users lose read access (the tree is hard-linked to the
    task's input under the state dir, which gets the same modes). A worker that runs as the agent's
    own uid needs no group bits either.
    """
    dedicated = identity is not None and identity.dedicated
    for root, dirs, files in os.walk(input_dir):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            if os.path.islink(name):
                continue
            st = os.lstat(name)
            if identity is not None and dedicated:
                os.chown(name, -1, identity.gid)
                extra = 0o050 if os.path.isdir(name) else 0o040
                os.chmod(name, (st.st_mode | extra) & ~0o027 & 0o7777)
            else:
                os.chmod(name, st.st_mode & ~0o077 & 0o7777)


def _prepare_scratch(root: Path, identity: Identity | None) -> Path:
    """The directory holding worker slots: root-owned, 0711, reachable by the sandbox uid."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)
    if identity is not None and identity.dedicated:
        for parent in root.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise SandboxError("scratch_unreachable",
                                   f"sandbox scratch {root} lies under {parent}, which uid {identity.uid} cannot "
                                   "traverse: choose a scratch root outside any 0700 directory")
    return root


def _new_slot(scratch: Path, identity: Identity | None) -> Path:
    """A fresh worker slot: ``input`` (read-only to the worker) and ``work`` (its scratch)."""
    slot = Path(tempfile.mkdtemp(prefix="slot-", dir=scratch))
    os.chmod(slot, 0o711)
    (slot / "input").mkdir(mode=0o750)
    (slot / "work").mkdir(mode=0o700)
    if identity is not None and identity.dedicated:
        os.chown(slot / "input", 0, identity.gid)
        os.chown(slot / "work", identity.uid, identity.gid)
    return slot


def _move_back(work: Path, dest: Path) -> None:
    """Hand the worker's scratch files to the job's work_dir (renames only; never a cross-fs copy).

    Only without namespaces is scratch a host directory; with them it is a tmpfs that dies
    with the worker and nothing comes back.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(work):
        try:
            os.rename(entry.path, dest / entry.name)
        except OSError as exc:
            log.info("sandbox scratch %s not moved to %s: %s", entry.name, dest, exc)


class _Worker:
    """One launched worker process and everything that must die with it."""

    def __init__(self, runner: "SandboxRunner", *, entry: str, entry_path: Path | None, slot: Path,
                 limits: EffectiveLimits, warm: bool) -> None:
        self._runner = runner
        self.entry, self.entry_path, self.warm = entry, entry_path, warm
        self.slot, self.input_dir, self.work_dir, self.limits = slot, slot / "input", slot / "work", limits
        self.proc: asyncio.subprocess.Process | None = None
        self.cgroup: TaskCgroup | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self.stderr_kept = bytearray()
        self.stderr_total = 0
        self.flooded = asyncio.Event()

    @property
    def namespaced(self) -> bool:
        return "namespaces" in self._runner.layers

    @property
    def _nproc(self) -> bool:
        # RLIMIT_NPROC counts every thread of the uid host-wide (all pods' tasks together), so it
        # is the fallback only: with a cgroup, pids.max caps this worker's tree exactly.
        return "uid" in self._runner.layers and "cgroup" not in self._runner.layers

    async def start(self, *, deadline: float | None = None) -> None:
        """Launch, place in the cgroup, confine (``go``) and wait for ``ready`` (prepare done).

        ``deadline`` (monotonic) bounds a cold start; a warm worker gets WARM_PREPARE_TIMEOUT_S.
        """
        runner, lim = self._runner, self.limits
        identity = runner._uid_identity
        plan_ro: tuple[str, ...] | None = None
        plan_rw: tuple[str, ...] = ()
        if self.namespaced:
            child_in, child_work = SANDBOX_INPUT, SANDBOX_WORK
            argv = bwrap_argv(bwrap=runner.bwrap, ro_paths=runner.ro_paths(self.entry_path), input_dir=self.input_dir,
                              env=worker_env(runner.identity, home=child_work, gpu=runner.gpu), gpu=runner.gpu,
                              tmpfs_bytes=lim.memory_mb << 20)
            env: dict[str, str] = {}
        else:
            child_in, child_work = self.input_dir, self.work_dir
            argv = bootstrap_argv()
            env = worker_env(runner.identity, home=child_work, gpu=runner.gpu)
            if "landlock" in runner.layers:
                ro, rw = landlock_paths(ro_paths=runner.ro_paths(self.entry_path), gpu=runner.gpu)
                plan_ro, plan_rw = tuple(ro + [str(child_in)]), tuple(rw + [str(child_work)])
        if runner.cgroup_support is not None:
            self.cgroup = await asyncio.to_thread(TaskCgroup.create, runner.cgroup_support,
                                                  memory_bytes=lim.memory_mb << 20, max_pids=lim.max_processes)
        kwargs: dict[str, Any] = {}
        # Only a root agent may switch uid and drop groups; a non-root agent's workers keep its
        # own uid (setgroups() would fail with EPERM and no worker could start).
        if identity is not None and identity.dedicated:
            kwargs = {"user": identity.uid, "group": identity.gid, "extra_groups": []}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=env, cwd="/", start_new_session=True, **kwargs)
        except OSError as exc:
            raise SandboxError("launch_failed", f"{argv[0]}: {exc}") from exc
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name="sandbox-stderr")
        await self._expect("hello", timeout=START_TIMEOUT_S)
        if self.cgroup is not None:
            # Nothing below the bootstrap forks until it gets `go`, so this tree is complete.
            await asyncio.to_thread(self.cgroup.add, descendants(self.proc.pid))
        cpu = lim.cpu_time_s + (WARM_PREPARE_CPU_S if self.warm else 0)
        plan = ConfinePlan(rlimits={"cpu": cpu, **lim.rlimits(nproc=self._nproc)},
                           seccomp="seccomp" in runner.layers, landlock_read_only=plan_ro, landlock_read_write=plan_rw,
                           keep_process_group=not self.namespaced and self.cgroup is None)
        await self._send({"type": "go", "plan": plan.to_json(), "entry": self.entry,
                          "entry_path": str(self.entry_path.resolve()) if self.entry_path else None,
                          "input_dir": str(child_in), "work_dir": str(child_work)})
        ready_timeout = WARM_PREPARE_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        await self._expect("ready", timeout=max(ready_timeout, 0.0))

    async def _send(self, header: dict[str, Any]) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise SandboxError("protocol", "worker is not running")
        try:
            self.proc.stdin.write(encode_frame(header))
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise SandboxError("no_result", "worker closed its input before the task was sent") from exc

    async def _read(self, timeout: float) -> Frame | None:
        if self.proc is None or self.proc.stdout is None:
            raise SandboxError("protocol", "worker is not running")
        read = asyncio.ensure_future(read_frame_async(self.proc.stdout,
                                                      max_payload_bytes=self.limits.max_output_mb << 20))
        flood = asyncio.ensure_future(self.flooded.wait())
        try:
            done, _pending = await asyncio.wait({read, flood}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            flood.cancel()
        if flood in done and read not in done:
            read.cancel()
            raise SandboxError("output_exceeded", f"worker wrote more than {MAX_LOG_BYTES} bytes to stdout/stderr")
        if read not in done:
            read.cancel()
            raise SandboxError("wall_timeout", f"no answer within {timeout:.1f} s")
        return read.result()

    async def _expect(self, kind: str, *, timeout: float) -> None:
        frame = await self._read(timeout)
        if frame is None:
            raise SandboxError(await self._ended_reason(), f"worker ended before {kind!r}")
        if frame.type == "fail":
            raise await self._failed(frame)
        if frame.type != kind:
            raise SandboxError("protocol", f"expected {kind!r}, worker sent {frame.type[:32]!r}")

    async def _memory_events(self) -> MemoryEvents | None:
        return None if self.cgroup is None else await asyncio.to_thread(self.cgroup.memory_events)

    async def _oom_killed(self) -> bool:
        memory = await self._memory_events()
        return memory is not None and bool(memory.oom_kills)

    async def _ended_reason(self) -> str:
        if self.proc is None:
            return "no_result"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), REAP_TIMEOUT_S)
        return _exit_reason(self.proc.returncode, namespaced=self.namespaced, memory=await self._memory_events())

    async def _failed(self, frame: Frame) -> SandboxError:
        """The error for a ``fail`` frame: the worker's word, unless the OOM killer struck its tree.

        A process killed at the memory cap (a forked helper, a DataLoader worker) makes the
        survivor fail with a word of its own; the cap is what happened.
        """
        if await self._oom_killed():
            return SandboxError("memory_exceeded", "a worker process was killed at the memory cap")
        return SandboxError("task_failed", _fixed_code(frame.header.get("reason")))

    async def _drain_stderr(self) -> None:
        if self.proc is None or self.proc.stderr is None:
            return
        while chunk := await self.proc.stderr.read(65536):
            self.stderr_total += len(chunk)
            room = STDERR_KEEP_BYTES - len(self.stderr_kept)
            if room > 0:
                self.stderr_kept += chunk[:room]
            if self.stderr_total > MAX_LOG_BYTES:
                self.flooded.set()

    async def run_task(self, request: dict[str, Any], limits: EffectiveLimits, *, deadline: float,
                       on_progress: Callable[[dict[str, Any]], None] | None) -> tuple[dict[str, Any], bytes]:
        """Send the request and read frames until the result; raises SandboxError on any other end."""
        if self.cgroup is not None:
            try:
                await asyncio.to_thread(self.cgroup.set_limits, memory_bytes=limits.memory_mb << 20,
                                        max_pids=limits.max_processes)
            except OSError as exc:
                # v1 refuses a memory cap below current usage (a warm worker already holds torch).
                raise SandboxError("cgroup_failed", f"lowering the worker's caps to the task's: {exc}") from exc
        await self._send({"type": "request", "request": request, "cpu_time_s": limits.cpu_time_s,
                          "rlimits": limits.rlimits(nproc=self._nproc)})
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError("wall_timeout", f"task ran past {limits.wall_timeout_s:.1f} s")
            frame = await self._read(remaining)
            if frame is None:
                raise SandboxError(await self._ended_reason(), "worker exited without a result")
            if frame.type == "progress":
                event = frame.header.get("event")
                if isinstance(event, dict) and on_progress is not None:
                    on_progress(event)
            elif frame.type == "result":
                header = frame.header.get("header")
                if not isinstance(header, dict):
                    raise SandboxError("bad_frame", "result frame without a JSON object header")
                if frame.payload:
                    check_safetensors(frame.payload)
                if await self._oom_killed():
                    # Part of the tree was OOM-killed: whatever it reports was computed without it.
                    raise SandboxError("memory_exceeded", "a worker process was killed at the memory cap")
                return header, frame.payload
            elif frame.type == "fail":
                raise await self._failed(frame)
            else:
                raise SandboxError("protocol", f"unexpected frame type {frame.type[:32]!r}")

    async def destroy(self) -> None:
        """Kill the whole tree, wait for every pipe to close, remove the cgroup. Safe to call twice."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                # bwrap's init dies with it (--die-with-parent) and takes the pid namespace down.
                os.killpg(proc.pid, signal.SIGKILL)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.kill_all)
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), REAP_TIMEOUT_S)
        survived = False
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._stderr_task), REAP_TIMEOUT_S)
            except asyncio.TimeoutError:
                # Someone still holds the stderr pipe: a process escaped the kill.
                survived = True
                self._stderr_task.cancel()
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
            self.cgroup = None
        if survived:
            raise SandboxError("tree_survived", "a worker process kept its pipes open after the kill")


def _fixed_code(reason: object) -> str:
    if isinstance(reason, str) and reason.replace("_", "").isalnum() and reason.islower() and len(reason) <= 64:
        return reason
    return "invalid_reason"


class SandboxRunner:
    """Runs jobs in confined workers at the pod's configured level (fail-closed at construction)."""

    def __init__(self, security: "SecuritySection", limits: "SandboxLimitsSection", gpu: bool = False, *,
                 scratch_root: Path | None = None, unsafe_disable_layers: frozenset[str] = frozenset()) -> None:
        check_worker_package()
        reports = probe_layers(security)
        if unsafe_disable_layers:
            log.warning("sandbox layers disabled by unsafe_disable_layers: %s", sorted(unsafe_disable_layers))
            reports = [LayerReport(r.name, False, "disabled by unsafe_disable_layers") if r.name in unsafe_disable_layers
                       else r for r in reports]
        self.level = security.sandbox
        self.layers = plan_layers(self.level, reports)
        self.gpu = gpu
        self._pod_limits = limits
        self.identity = resolve_identity(security.sandbox_user) if "uid" in self.layers else Identity(
            "root" if os.geteuid() == 0 else str(os.geteuid()), os.geteuid(), os.getegid(), False)
        # Without the uid layer the fallback identity is the agent's own: nothing is chowned to it
        # and no worker switches to it.
        self._uid_identity = self.identity if "uid" in self.layers else None
        self.bwrap = shutil.which("bwrap") or "bwrap"
        self.cgroup_support = detect_cgroups() if "cgroup" in self.layers else None
        shared = _prepare_scratch(scratch_root or Path(tempfile.gettempdir()) / "pod-agent-sandbox",
                                  self._uid_identity)
        # One subdirectory per runner: several pods on one host share the scratch root.
        self._scratch = Path(tempfile.mkdtemp(prefix="runner-", dir=shared))
        os.chmod(self._scratch, 0o711)
        self._warm: dict[tuple[str, str], _Worker] = {}
        self._warming: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._closed = False

    def _slot(self) -> Path:
        return _new_slot(self._scratch, self._uid_identity)

    def ro_paths(self, entry_path: Path | None) -> list[Path]:
        return python_ro_paths(entry_path)

    async def __aenter__(self) -> "SandboxRunner":
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _limits(self, task: SandboxLimits) -> EffectiveLimits:
        return EffectiveLimits.resolve(self._pod_limits, task)

    async def prewarm(self, entry: str, *, entry_path: Path | None = None) -> None:
        """Start the warm worker for ``entry`` (confined, past prepare(), waiting for a request)."""
        key = (entry, str(entry_path))
        if key in self._warm or self._closed:
            return
        worker = _Worker(self, entry=entry, entry_path=entry_path, slot=self._slot(),
                         limits=self._limits(SandboxLimits()), warm=True)
        try:
            await worker.start()
        except BaseException:
            await asyncio.shield(_destroy_quietly(worker))
            shutil.rmtree(worker.slot, ignore_errors=True)
            raise
        self._warm[key] = worker

    def _schedule_prewarm(self, entry: str, entry_path: Path | None) -> None:
        key = (entry, str(entry_path))
        if self._closed or key in self._warming or not self._pod_limits.warm_worker:
            return

        async def _warm() -> None:
            try:
                await self.prewarm(entry, entry_path=entry_path)
            except (SandboxError, OSError) as exc:
                log.warning("warm worker for %s could not start (%s); next task starts cold", entry,
                            exc.code if isinstance(exc, SandboxError) else exc)
            finally:
                self._warming.pop(key, None)

        self._warming[key] = asyncio.create_task(_warm(), name=f"sandbox-prewarm-{entry}")

    async def wait_warm(self, entry: str, *, entry_path: Path | None = None) -> bool:
        """Wait for a scheduled warm worker; True when one is parked for ``entry``."""
        task = self._warming.get((entry, str(entry_path)))
        if task is not None:
            await asyncio.wait({task})
        return (entry, str(entry_path)) in self._warm

    async def run(self, job: SandboxJob,
                  on_progress: Callable[[dict[str, Any]], None] | None = None) -> SandboxOutcome:
        """Run one job; raises SandboxError(reason=...) on timeout, kill, protocol violation or task failure."""
        if self._closed:
            raise SandboxError("closed", "the sandbox runner is shut down")
        if self.level == "none":
            log.warning("sandbox level 'none': this task runs UNCONFINED (development only; set "
                        "security.sandbox = 'strict' in pod.toml)")
        limits = self._limits(job.limits)
        key = (job.entry, str(job.entry_path))
        warming = self._warming.get(key)
        if warming is not None and key not in self._warm:
            # A warm-up already under way is never slower than a cold start begun now.
            await asyncio.wait({warming})
        worker = self._warm.pop(key, None)
        if worker is None:
            worker = _Worker(self, entry=job.entry, entry_path=job.entry_path, slot=self._slot(), limits=limits,
                             warm=False)
        try:
            try:
                await asyncio.to_thread(_link_tree, job.input_dir, worker.input_dir)
                await asyncio.to_thread(_grant_input, worker.input_dir, self._uid_identity)
            except OSError as exc:
                raise SandboxError("input_unreadable", f"staging {job.input_dir} for the worker: {exc}") from exc
            deadline = time.monotonic() + limits.wall_timeout_s
            if worker.proc is None:
                await worker.start(deadline=deadline)
            header, payload = await worker.run_task(job.request, limits, deadline=deadline, on_progress=on_progress)
        finally:
            # Shielded: a cancelled task (timeout upstream, agent shutdown) still has its tree killed.
            await asyncio.shield(self._finish(worker, job))
        return SandboxOutcome(header=header, payload=payload)

    async def _finish(self, worker: _Worker, job: SandboxJob) -> None:
        try:
            await worker.destroy()
        finally:
            await asyncio.to_thread(_keep_stderr, worker, job.stderr_path)
            await asyncio.to_thread(_move_back, worker.work_dir, job.work_dir)
            shutil.rmtree(worker.slot, ignore_errors=True)
            self._schedule_prewarm(job.entry, job.entry_path)

    async def aclose(self) -> None:
        """Kill warm workers and pending pre-warms (agent shutdown)."""
        self._closed = True
        for task in list(self._warming.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SandboxError):
                await task
        for worker in list(self._warm.values()):
            await _destroy_quietly(worker)
            shutil.rmtree(worker.slot, ignore_errors=True)
        self._warm.clear()
        shutil.rmtree(self._scratch, ignore_errors=True)


async def _destroy_quietly(worker: _Worker) -> None:
    try:
        await worker.destroy()
    except SandboxError as exc:
        log.error("sandbox worker cleanup: %s", exc)


def _keep_stderr(worker: _Worker, path: Path | None) -> None:
    """Log how much the worker wrote to stderr; its text only ever goes to ``path``."""
    if not worker.stderr_total:
        return
    if path is None:
        log.info("sandbox worker wrote %d bytes to stderr (not kept: set security.keep_sandbox_stderr = true "
                 "to keep it under the state dir)", worker.stderr_total)
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(worker.stderr_kept)
    except OSError as exc:
        log.warning("sandbox worker stderr (%d bytes) not kept: %s", worker.stderr_total, exc)
        return
    log.info("sandbox worker wrote %d bytes to stderr; first %d kept in %s", worker.stderr_total,
             len(worker.stderr_kept), path)
    kept = sorted(path.parent.glob("*.log"), key=lambda p: p.stat().st_mtime_ns)
    for old in kept[:-KEPT_STDERR_FILES]:
        old.unlink(missing_ok=True)


def _link_tree(src: Path, dst: Path) -> None:
    """Put the job's input into a warm worker's bound input dir: hard links, copies across filesystems."""
    def _link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    # symlinks=True: a link in the input is copied as a link (dangling inside), never followed on the host.
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True)


__all__ = ["EffectiveLimits", "SandboxJob", "SandboxLimits", "SandboxOutcome", "SandboxRunner"]
