"""One worker process: launch it confined, trade frames with it, kill its whole tree.

Owns the bwrap or direct command (launch.py), the per-worker cgroup, the hand-off of
rlimits/seccomp/Landlock to the bootstrap in the ``go`` frame, the frame sequence and its
caps, the stderr drain (capped; its text is kept for staging.keep_stderr, never sent to the
hub), timeouts, killing the tree, and naming the cap that ended a worker (``SandboxError``
codes ``memory_exceeded``, ``wall_timeout``, ``cpu_time_exceeded``, ``file_size_exceeded``,
``output_exceeded``, ``frame_too_large``; a worker's own word comes as ``task_failed`` with
the word as detail, unless the cgroup counted an OOM kill, which outranks whatever the worker
says). A worker is built from a frozen ``LaunchSpec`` (the runner's choices, fixed once) and
its slot (staging.py); it serves one task. Which worker serves which task is pool.py's and
runner.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pod_agent.errors import SandboxError
from pod_agent.sandbox.cgroup import CgroupSupport, MemoryEvents, TaskCgroup, descendants
from pod_agent.sandbox.confine import ConfinePlan
from pod_agent.sandbox.frames import Frame, check_safetensors, encode_frame, read_frame_async
from pod_agent.sandbox.launch import (
    SANDBOX_INPUT,
    SANDBOX_WORK,
    Identity,
    bootstrap_argv,
    bwrap_argv,
    landlock_paths,
    worker_env,
)
from pod_agent.sandbox.limits import EffectiveLimits
from pod_agent.sandbox.netns import check_loopback_only

log = logging.getLogger("pod_agent.sandbox")

# stderr kept for the job's stderr file; the rest is counted and dropped.
STDERR_KEEP_BYTES = 64 * 1024
# More stderr/stdout than this is a flood: the task is killed ("output_exceeded").
MAX_LOG_BYTES = 8 * 1024 * 1024
# Start-up (bwrap + interpreter) and a warm worker's prepare() (torch + Lightning imports).
START_TIMEOUT_S = 30.0
WARM_PREPARE_TIMEOUT_S = 300.0
WARM_PREPARE_CPU_S = 600
# After a kill, how long the pipes may stay open before we call the tree a survivor.
REAP_TIMEOUT_S = 5.0
_EXIT_SIGNAL_BASE = 128


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a worker for ``entry`` is launched with, fixed when the runner is built.

    ``layers`` are the planned sandbox layers; ``identity`` is the name the worker's environment
    carries and ``switch_to`` the uid/gid it is started as (None: the agent's own, no switch);
    ``nproc_slack`` is None where RLIMIT_NPROC is not used (see limits.EffectiveLimits.rlimits).
    """

    entry: str
    entry_path: Path | None
    layers: frozenset[str]
    bwrap: str
    identity: Identity
    switch_to: Identity | None
    gpu: bool
    cgroup_support: CgroupSupport | None
    ro_paths: tuple[Path, ...]
    nproc_slack: int | None

    @property
    def namespaced(self) -> bool:
        return "namespaces" in self.layers

    @property
    def key(self) -> tuple[str, str]:
        """Which parked workers can serve a job: same entry module, same import path."""
        return self.entry, str(self.entry_path)


def exit_reason(returncode: int | None, *, namespaced: bool, memory: MemoryEvents | None) -> str:
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


class WorkerProcess:
    """One launched worker process and everything that must die with it; it serves one task.

    ``warm`` workers start before any task (pool.py) under the pod's limits plus the prepare()
    allowance, and are lowered to the task's limits when it comes (``run_task``).
    """

    def __init__(self, spec: LaunchSpec, *, slot: Path, limits: EffectiveLimits, warm: bool) -> None:
        self.spec, self.warm = spec, warm
        self.slot, self.input_dir, self.work_dir, self.limits = slot, slot / "input", slot / "work", limits
        self.proc: asyncio.subprocess.Process | None = None
        # The frame streams and stderr: the process's pipes here, a forked child's sockets (forkserver.py).
        self._frames_in: asyncio.StreamReader | None = None
        self._frames_out: asyncio.StreamWriter | None = None
        self._errors: asyncio.StreamReader | None = None
        self.cgroup: TaskCgroup | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self.stderr_kept = bytearray()
        self.stderr_total = 0
        self.flooded = asyncio.Event()

    @property
    def started(self) -> bool:
        return self._frames_out is not None

    async def start(self, *, deadline: float | None = None, go_extra: dict[str, Any] | None = None,
                    pass_fds: tuple[int, ...] = ()) -> None:
        """Launch, place in the cgroup, confine (``go``) and wait for ``ready`` (prepare done).

        ``deadline`` (monotonic) bounds a cold start; a warm worker gets WARM_PREPARE_TIMEOUT_S.
        ``go_extra`` and ``pass_fds`` make a fork server (forkserver.py): more ``go`` fields, and the
        descriptors it inherits.
        """
        spec, lim = self.spec, self.limits
        identity = spec.switch_to
        plan_ro: tuple[str, ...] | None = None
        plan_rw: tuple[str, ...] = ()
        if spec.namespaced:
            child_in, child_work = SANDBOX_INPUT, SANDBOX_WORK
            argv = bwrap_argv(bwrap=spec.bwrap, ro_paths=list(spec.ro_paths), input_dir=self.input_dir,
                              env=worker_env(spec.identity, home=child_work, gpu=spec.gpu), gpu=spec.gpu,
                              tmpfs_bytes=lim.memory_mb << 20)
            env: dict[str, str] = {}
        else:
            child_in, child_work = self.input_dir, self.work_dir
            argv = bootstrap_argv()
            env = worker_env(spec.identity, home=child_work, gpu=spec.gpu)
            if "landlock" in spec.layers:
                ro, rw = landlock_paths(ro_paths=list(spec.ro_paths), gpu=spec.gpu)
                plan_ro, plan_rw = tuple([*ro, str(child_in)]), tuple([*rw, str(child_work)])
        if spec.cgroup_support is not None:
            self.cgroup = await asyncio.to_thread(TaskCgroup.create, spec.cgroup_support,
                                                  memory_bytes=lim.memory_mb << 20, max_pids=lim.max_processes)
        kwargs: dict[str, Any] = {}
        # Only a root agent may switch uid and drop groups; a non-root agent's workers keep its
        # own uid (setgroups() would fail with EPERM and no worker could start).
        if identity is not None and identity.dedicated:
            kwargs = {"user": identity.uid, "group": identity.gid, "extra_groups": []}
        spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd="/", start_new_session=True, pass_fds=pass_fds, **kwargs))
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # asyncio's own clean-up of a spawn cancelled while its pipes connect kills the spawned process alone
            # and then waits for every pipe to close (CPython 3.11; gh-133536): bwrap's init, which holds them and
            # dies with its parent only once it has armed its parent-death signal, held that wait for ever (a
            # pool's start cancelled at shutdown). The spawn finishes instead, and the caller's destroy() ends the
            # whole tree.
            with contextlib.suppress(OSError):
                self._spawned(await asyncio.shield(spawn))
            raise
        except OSError as exc:
            raise SandboxError("launch_failed", f"{argv[0]}: {exc}") from exc
        self._spawned(proc)
        await self._expect("hello", timeout=START_TIMEOUT_S)
        if self.cgroup is not None:
            # Nothing below the bootstrap forks until it gets `go`, so this tree is complete.
            await asyncio.to_thread(self.cgroup.add, descendants(proc.pid))
        if lim.ranks > 1:
            # Data-parallel ranks meet over TCP: allowed only in a network namespace seen to hold loopback alone.
            await asyncio.to_thread(check_loopback_only, descendants(proc.pid)[1:])
        cpu = lim.cpu_time_s + (WARM_PREPARE_CPU_S if self.warm else 0)
        plan = ConfinePlan(rlimits={"cpu": cpu, **lim.rlimits(nproc_slack=spec.nproc_slack)},
                           seccomp="seccomp" in spec.layers, landlock_read_only=plan_ro, landlock_read_write=plan_rw,
                           keep_process_group=not spec.namespaced and self.cgroup is None,
                           loopback_network=lim.ranks > 1)
        await self._send({"type": "go", "plan": plan.to_json(), "entry": spec.entry,
                          "entry_path": str(spec.entry_path.resolve()) if spec.entry_path else None,
                          "input_dir": str(child_in), "work_dir": str(child_work), **(go_extra or {})})
        ready_timeout = WARM_PREPARE_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        await self._expect("ready", timeout=max(ready_timeout, 0.0))

    def _spawned(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._frames_in, self._frames_out, self._errors = proc.stdout, proc.stdin, proc.stderr
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name="sandbox-stderr")

    async def _send(self, header: dict[str, Any]) -> None:
        if self._frames_out is None:
            raise SandboxError("protocol", "worker is not running")
        try:
            self._frames_out.write(encode_frame(header))
            await self._frames_out.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise SandboxError("no_result", "worker closed its input before the task was sent") from exc

    async def _read(self, timeout: float) -> Frame | None:
        if self._frames_in is None:
            raise SandboxError("protocol", "worker is not running")
        read = asyncio.ensure_future(read_frame_async(self._frames_in,
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
        try:
            return read.result()
        except ConnectionResetError:
            return None  # a forked child killed with our request unread: it ended, like an EOF

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
        return exit_reason(self.proc.returncode, namespaced=self.spec.namespaced, memory=await self._memory_events())

    async def _failed(self, frame: Frame) -> SandboxError:
        """The error for a ``fail`` frame: the worker's word, unless the OOM killer struck its tree.

        A process killed at the memory cap (a forked helper, a DataLoader worker) makes the
        survivor fail with a word of its own; the cap is what happened.
        """
        if await self._oom_killed():
            return SandboxError("memory_exceeded", "a worker process was killed at the memory cap")
        return SandboxError("task_failed", _fixed_code(frame.header.get("reason")))

    async def _drain_stderr(self) -> None:
        if self._errors is None:
            return
        while chunk := await self._errors.read(65536):
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
                          "rlimits": limits.rlimits(nproc_slack=self.spec.nproc_slack)})
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
            if self.cgroup is None:
                # bwrap's init dies with bwrap (--die-with-parent), taking the pid namespace down, once it has
                # armed that signal; one killed with a bwrap that had only just cloned it would live on, in a
                # session of its own that the group kill below misses. Killed here by pid.
                for pid in (await asyncio.to_thread(descendants, proc.pid))[1:]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.kill_all)
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), REAP_TIMEOUT_S)
        survived = await self._tree_survived()
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
            self.cgroup = None
        if survived:
            raise SandboxError("tree_survived", "a worker process kept its pipes open after the kill")

    async def _tree_survived(self) -> bool:
        """After the kill: whether some process still holds the worker's stderr past REAP_TIMEOUT_S (EOF
        comes once every holder is gone, so a holder is a process that escaped the kill)."""
        if self._stderr_task is None:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(self._stderr_task), REAP_TIMEOUT_S)
        except TimeoutError:
            self._stderr_task.cancel()
            return True
        return False

    async def discard(self) -> None:
        """Kill the tree and remove the slot, logging (not raising) a survivor: for workers no task
        took (a pool's spare at shutdown, a start that failed)."""
        try:
            await self.destroy()
        except SandboxError as exc:
            log.error("sandbox worker cleanup: %s", exc)
        shutil.rmtree(self.slot, ignore_errors=True)


def _fixed_code(reason: object) -> str:
    if isinstance(reason, str) and reason.replace("_", "").isalnum() and reason.islower() and len(reason) <= 64:
        return reason
    return "invalid_reason"


__all__ = ["LaunchSpec", "WorkerProcess", "exit_reason"]
