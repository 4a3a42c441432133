"""The agent's side of the fork server: one confined zygote per entry, a fresh forked child per task.

Owns starting the zygote (a warm worker whose ``go`` frame makes it serve forks: zygote.py), starting
it again when it has died, asking it for a child per task (one JSON message and three descriptors over
its control socket: the child's frame socket, its stderr socket, its input directory), learning the
child's host pid from the credentials on its first byte (the kernel's word, sent before any modeller
code runs), placing the child in a cgroup of its own with the task's caps before sending the request,
and ending the child: its whole tree killed through that cgroup, its exit status from the zygote, its
scratch released. A child serves one task, like any worker (process.py); the runner picks the fork
server or the warm pool (pool.py) once, from which layers hold for fork children (probe.py).

The next task's child is forked ahead ("parked"): once a zygote is ready, and again once its last child
is released (its tree dead, its traces wiped), so a task finds its child forked, in a cgroup of its own
under the pod's caps (lowered to the task's with the request) and waiting for its request; the fork,
the credentials and the cgroup move (~40 ms on 2 cores) are off the task's path. A parked child holds
its zygote busy like a running one, so a zygote still has one child at a time; it is forked after the
previous child's release, so it holds nothing of any task, exactly like a child forked on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

from pod_agent.errors import SandboxError
from pod_agent.sandbox.cgroup import TaskCgroup
from pod_agent.sandbox.frames import read_frame_async
from pod_agent.sandbox.launch import landlock_paths
from pod_agent.sandbox.limits import EffectiveLimits
from pod_agent.sandbox.process import REAP_TIMEOUT_S, START_TIMEOUT_S, LaunchSpec, WorkerProcess, exit_reason
from pod_agent.sandbox.zygote import HELLO_BYTE

log = logging.getLogger("pod_agent.sandbox")

_UCRED = struct.Struct("3i")  # pid, uid, gid
# A rehearsal takes ~0.05 s of CPU; a child still at it after this is not worth parking.
REHEARSAL_TIMEOUT_S = 30.0


class _ZygoteEnded(Exception):
    """The zygote picked for a child died before the child started (its end not yet read)."""


class Zygote(WorkerProcess):
    """The fork server process: started as a warm worker, then asked for children until it dies."""

    def __init__(self, spec: LaunchSpec, *, slot: Path, limits: EffectiveLimits) -> None:
        super().__init__(spec, slot=slot, limits=limits, warm=True)
        self._control, self._zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._exits: dict[str, asyncio.Future[int | None]] = {}
        self._reports: asyncio.Task[None] | None = None
        # One child at a time: the next is forked only after the last one's tree is dead and its
        # traces (scratch, /dev/shm) are wiped, so no two tasks ever share the zygote's tmpfs.
        self.busy = False
        self._broken = False  # its control socket failed: dead, whatever its frames say yet

    @property
    def alive(self) -> bool:
        return self._reports is not None and not self._reports.done() and not self._broken

    async def serve(self) -> None:
        """Launch, confine and prepare like a warm worker, then switch it to serving forks."""
        ro, rw = landlock_paths(ro_paths=list(self.spec.ro_paths), gpu=self.spec.gpu)
        plan = {"control_fd": self._zygote_end.fileno(), "landlock_read_only": ro, "landlock_read_write": rw}
        try:
            await self.start(go_extra={"zygote": plan}, pass_fds=(self._zygote_end.fileno(),))
        finally:
            self._zygote_end.close()
        self._reports = asyncio.create_task(self._read_reports(), name=f"sandbox-zygote-{self.spec.entry}")

    async def _read_reports(self) -> None:
        """The zygote's ``exited`` frames, each resolving its child's future; any other frame, or the
        zygote's end, resolves every pending child with None (their status is unknown)."""
        try:
            while self._frames_in is not None:
                frame = await read_frame_async(self._frames_in, max_payload_bytes=0)
                if frame is None or frame.type != "exited":
                    break
                future = self._exits.pop(str(frame.header.get("id")), None)
                if future is not None and not future.done():
                    future.set_result(int(frame.header["status"]))
        except SandboxError as exc:
            log.error("sandbox fork server sent a bad frame (%s); it is started again", exc.code)
        finally:
            for future in self._exits.values():
                if not future.done():
                    future.set_result(None)
            self._exits.clear()

    def fork(self, task_id: str, fds: list[int]) -> asyncio.Future[int | None]:
        """Ask for a child with these descriptors; the future gets its wait status (None: unknown)."""
        if not self.alive:
            raise SandboxError("no_warm_worker", "the fork server is not running")
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._exits[task_id] = future
        try:
            socket.send_fds(self._control, [json.dumps({"type": "fork", "id": task_id}).encode()], fds)
        except OSError as exc:
            self._exits.pop(task_id, None)
            self._broken = True
            raise SandboxError("no_warm_worker", f"the fork server refused a fork: {exc}") from exc
        return future

    def release(self, task_id: str, *, clean: bool) -> None:
        """The child's tree is dead: the zygote wipes its traces before it forks again. Not ``clean``
        (a process outlived the kill, or the child's end is unknown): the zygote could have been
        touched, so it is ended and another starts when a task needs one."""
        try:
            socket.send_fds(self._control, [json.dumps({"type": "release", "id": task_id}).encode()], [])
        except OSError:
            clean = False
        if not clean and self.proc is not None and self.proc.returncode is None:
            log.warning("sandbox fork server retired after an unclean child end; another starts on demand")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.busy = False

    async def discard(self) -> None:
        self._control.close()
        await super().discard()
        if self._reports is not None:
            await asyncio.wait({self._reports}, timeout=REAP_TIMEOUT_S)


def _hello_pid(sock: socket.socket, timeout: float) -> tuple[int, int]:
    """The (pid, uid) the kernel attached to the child's first byte (blocking; run in a thread)."""
    sock.settimeout(timeout)
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(1, socket.CMSG_SPACE(_UCRED.size))
    except TimeoutError as exc:
        raise SandboxError("wall_timeout", f"the forked worker did not start within {timeout:.1f} s") from exc
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
    if data != HELLO_BYTE:
        raise SandboxError("no_result", "the forked worker ended before it started")
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(raw) >= _UCRED.size:
            pid, uid, _gid = _UCRED.unpack(raw[: _UCRED.size])
            return pid, uid
    raise SandboxError("protocol", "the forked worker's first byte came without credentials")


def _live(pid: int) -> bool:
    """The host process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class ForkedWorker(WorkerProcess):
    """One task's child of a zygote: the same frames, caps and reasons as a launched worker."""

    def __init__(self, spec: LaunchSpec, *, slot: Path, limits: EffectiveLimits, zygote: Zygote,
                 server: ForkServer) -> None:
        super().__init__(spec, slot=slot, limits=limits, warm=False)
        self._zygote, self._server, self._id = zygote, server, uuid.uuid4().hex[:16]
        self._exited: asyncio.Future[int | None] | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._released = False
        self.host_pid: int | None = None
        self.ahead = False  # forked before its task came (ForkServer.park)

    async def start(self, *, deadline: float | None = None, go_extra: object = None,
                    pass_fds: tuple[int, ...] = ()) -> None:
        """Fork from the zygote, learn the child's pid, give it its own cgroup, open the frame streams."""
        try:
            mine, pid, uid = await self._fork()
        except _ZygoteEnded:
            # The zygote died after it was picked (its end not yet read): once more, on a live one.
            self._zygote.busy = False
            self._zygote = await self._server.acquire(self.spec)
            try:
                mine, pid, uid = await self._fork()
            except _ZygoteEnded as exc:
                raise SandboxError("no_result", "the fork server ended before its child started, twice") from exc
        if self.spec.switch_to is not None and uid != self.spec.switch_to.uid:
            mine.close()
            raise SandboxError("protocol", f"the forked worker runs as uid {uid}, not the sandbox uid")
        self.host_pid = pid
        if self.spec.cgroup_support is not None:
            self.cgroup = await asyncio.to_thread(TaskCgroup.create, self.spec.cgroup_support,
                                                  memory_bytes=self.limits.memory_mb << 20,
                                                  max_pids=self.limits.max_processes)
            # The child waits for its request before anything else runs, so it is the whole tree.
            await asyncio.to_thread(self.cgroup.add, [pid])
        self._frames_in, self._frames_out = await asyncio.open_unix_connection(sock=mine)

    async def rehearse(self) -> None:
        """Have the started child rehearse (zygote.py: a task of the entry's own, run while no task waits) and
        wait for it to finish; raises SandboxError when it answers anything else or not in time."""
        await self._send({"type": "rehearse"})
        await self._expect("rehearsed", timeout=REHEARSAL_TIMEOUT_S)

    async def _fork(self) -> tuple[socket.socket, int, int]:
        """Ask the zygote for a child; its frame socket and the (pid, uid) on its first byte. Raises
        _ZygoteEnded when the zygote is gone before the child said hello."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_mine, err_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        input_fd = os.open(self.input_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._exited = self._zygote.fork(self._id, [theirs.fileno(), err_theirs.fileno(), input_fd])
        except SandboxError as exc:
            for end in (mine, err_mine):
                end.close()
            raise _ZygoteEnded from exc
        finally:
            for end in (theirs, err_theirs):
                end.close()
            os.close(input_fd)
        self._errors, err_writer = await asyncio.open_unix_connection(sock=err_mine)
        self._writers.append(err_writer)
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name="sandbox-stderr")
        try:
            pid, uid = await asyncio.to_thread(_hello_pid, mine, START_TIMEOUT_S)
        except SandboxError as exc:
            mine.close()
            if exc.code == "no_result" and await self._zygote_ended():
                self._stderr_task.cancel()
                err_writer.close()
                raise _ZygoteEnded from exc
            raise
        return mine, pid, uid

    async def lost_with_zygote(self) -> bool:
        """Whether this child was forked ahead and its zygote has ended (so the child died with it)."""
        return self.ahead and await self._zygote_ended()

    def waiting(self) -> bool:
        """A parked child still worth a task: started, its zygote and itself alive as far as is known now
        (a zygote killed a moment ago may still count as alive: its process is checked too)."""
        zygote = self._zygote.proc
        return (self.started and self._zygote.alive and zygote is not None and _live(zygote.pid)
                and self.host_pid is not None and _live(self.host_pid)
                and self._exited is not None and not self._exited.done())

    async def _zygote_ended(self) -> bool:
        """Whether the zygote itself is gone (its reports end with an unknown status for this child)."""
        if self._exited is None:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._exited), REAP_TIMEOUT_S) is None
        return False

    async def _ended_reason(self) -> str:
        status = None
        if self._exited is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                status = await asyncio.wait_for(asyncio.shield(self._exited), REAP_TIMEOUT_S)
        returncode = None if status is None else os.waitstatus_to_exitcode(status)
        return exit_reason(returncode, namespaced=False, memory=await self._memory_events())

    async def destroy(self) -> None:
        """Kill the child's whole tree (its cgroup), wait for its sockets to close and the zygote's
        report, remove the cgroup and release its scratch. Safe to call twice."""
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.kill_all)
        elif self.host_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.host_pid, signal.SIGKILL)
        if self._frames_out is not None:
            self._frames_out.close()
        survived = await self._tree_survived()
        for writer in self._writers:
            writer.close()
        status = None
        if self._exited is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                status = await asyncio.wait_for(asyncio.shield(self._exited), REAP_TIMEOUT_S)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
            self.cgroup = None
        if not self._released:
            self._released = True
            self._zygote.release(self._id, clean=not survived and (status is not None or self._exited is None))
            self._server.park(self.spec)
        if survived:
            raise SandboxError("tree_survived", "a forked worker process kept its sockets open after the kill")


def _parked_child(fork: asyncio.Task[ForkedWorker | None]) -> ForkedWorker | bool:
    """A fork ahead's child; True while it is under way; False when it ended without one."""
    if not fork.done():
        return True
    if fork.cancelled() or fork.exception() is not None:
        return False
    return fork.result() or False


class ForkServer:
    """Zygotes per entry, each serving one child at a time; one more starts when all are busy
    (``training.max_concurrent_tasks`` above one), and a dead one is started again on demand."""

    def __init__(self, *, limits: EffectiveLimits, new_slot: Callable[[], Path]) -> None:
        self._limits, self._new_slot = limits, new_slot
        self._zygotes: dict[tuple[str, str], list[Zygote]] = {}
        self._starting: dict[tuple[str, str], asyncio.Task[Zygote]] = {}
        # The next task's child per entry, forked ahead (or being forked); None when no zygote was idle.
        self._parked: dict[tuple[str, str], asyncio.Task[ForkedWorker | None]] = {}
        self._closed = False

    def _start(self, spec: LaunchSpec) -> asyncio.Task[Zygote]:
        """The start under way for ``spec``, begun now when none is."""
        task = self._starting.get(spec.key)
        if task is None or task.done():
            task = asyncio.create_task(self._launch(spec), name=f"sandbox-zygote-start-{spec.entry}")
            self._starting[spec.key] = task
        return task

    async def _launch(self, spec: LaunchSpec) -> Zygote:
        zygote = Zygote(spec, slot=self._new_slot(), limits=self._limits)
        try:
            await zygote.serve()
        except BaseException:
            # Shielded: a start cancelled at shutdown still has its tree killed.
            await asyncio.shield(zygote.discard())
            raise
        if self._closed:
            await zygote.discard()
            raise SandboxError("closed", "the sandbox runner is shut down")
        self._zygotes.setdefault(spec.key, []).append(zygote)
        return zygote

    async def _prune(self, spec: LaunchSpec) -> list[Zygote]:
        """The live zygotes for ``spec``; dead ones are discarded (their trees killed)."""
        zygotes = self._zygotes.get(spec.key, [])
        for dead in [z for z in zygotes if not z.alive]:
            log.warning("sandbox fork server for %s ended; another starts when a task needs it", spec.entry)
            zygotes.remove(dead)
            await dead.discard()
        return zygotes

    async def ensure(self, spec: LaunchSpec) -> None:
        """Start a zygote for ``spec`` unless one lives, and park a child on it; raises the start's
        SandboxError."""
        if not await self._prune(spec):
            await asyncio.shield(self._start(spec))
        self.park(spec)

    async def wait_parked(self, spec: LaunchSpec) -> None:
        """Wait for the child being forked ahead for ``spec``, its rehearsal included, if one is."""
        parked = self._parked.get(spec.key)
        if parked is not None:
            await asyncio.wait({parked})

    def park(self, spec: LaunchSpec) -> None:
        """Fork the next task's child for ``spec`` now, on an idle live zygote, unless one is parked."""
        parked = self._parked.get(spec.key)
        if self._closed or (parked is not None and _parked_child(parked) is not False):
            return
        self._parked[spec.key] = asyncio.create_task(self._fork_ahead(spec), name=f"sandbox-park-{spec.entry}")

    async def _fork_ahead(self, spec: LaunchSpec) -> ForkedWorker | None:
        idle = [z for z in self._zygotes.get(spec.key, []) if z.alive and not z.busy]
        if not idle:
            return None  # every zygote serves a task; the next release parks one
        idle[0].busy = True
        child = ForkedWorker(spec, slot=self._new_slot(), limits=self._limits, zygote=idle[0], server=self)
        child.ahead = True
        try:
            await child.start()
            # In its own cgroup by now, so the pages it copies count against the task's caps.
            await child.rehearse()
        except BaseException as exc:
            # Shielded: a fork cancelled at shutdown still has its child killed and its cgroup removed.
            await asyncio.shield(child.discard())
            if not isinstance(exc, Exception):
                raise
            log.warning("sandbox child could not be forked ahead (%s); the next task forks its own", exc)
            return None
        log.debug("sandbox child %s parked for %s, rehearsed", child.host_pid, spec.entry)
        return child

    async def _take_parked(self, spec: LaunchSpec) -> ForkedWorker | None:
        """The parked child for ``spec`` when it is still waiting (a fork under way is waited for); a
        dead one is discarded."""
        parked = self._parked.pop(spec.key, None)
        if parked is None:
            return None
        try:
            await asyncio.wait({parked})
        except asyncio.CancelledError:
            self._parked.setdefault(spec.key, parked)  # still the server's, for the next task or aclose()
            raise
        child = _parked_child(parked)
        if not isinstance(child, ForkedWorker):
            return None
        if not child.waiting():
            await child.discard()
            return None
        return child

    async def acquire(self, spec: LaunchSpec) -> Zygote:
        """An idle zygote, now busy (one is started when none is idle); raises the start's
        SandboxError when none could start."""
        while True:
            idle = [z for z in await self._prune(spec) if not z.busy]
            if idle:
                idle[0].busy = True
                return idle[0]
            await asyncio.shield(self._start(spec))

    async def child(self, spec: LaunchSpec, limits: EffectiveLimits) -> ForkedWorker:
        """The parked child, now under the task's ``limits``, or else an unstarted child of an idle
        zygote; raises the start's SandboxError when none could start."""
        parked = await self._take_parked(spec)
        if parked is not None:
            parked.limits = limits  # its cgroup's caps are lowered to these with the request (run_task)
            return parked
        zygote = await self.acquire(spec)
        return ForkedWorker(spec, slot=self._new_slot(), limits=limits, zygote=zygote, server=self)

    async def aclose(self) -> None:
        """Cancel starts under way and kill every zygote (children die with it: PDEATHSIG)."""
        self._closed = True
        tasks = [task for task in self._starting.values() if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        forks = list(self._parked.values())
        self._parked.clear()
        if forks:
            # Not cancelled: a child forked but not yet heard from has no pid to kill; a fork ahead ends
            # in milliseconds (or at the start timeout), then its child is ended like any other.
            await asyncio.wait(forks)
        for fork in forks:
            child = _parked_child(fork)
            if isinstance(child, ForkedWorker):
                await child.discard()
        for zygotes in self._zygotes.values():
            for zygote in zygotes:
                await zygote.discard()
        self._zygotes.clear()


__all__ = ["ForkServer", "ForkedWorker", "Zygote"]
