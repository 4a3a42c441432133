"""The fork server inside the sandbox: a confined worker that did the heavy imports once and forks a
fresh single-use child per task. It never runs modeller code itself.

The zygote is started exactly like a warm worker (bwrap namespaces, the sandbox uid, its cgroup,
rlimits and seccomp from the ``go`` frame) and, past ``prepare()``, serves forks instead of a task.
Owns the zygote's loop and each child's start-up order, which is the security argument:

1. the zygote makes itself non-dumpable (``PR_SET_DUMPABLE`` 0, inherited by every child): no
   process of the sandbox uid may ptrace it or open its ``/proc/<pid>/mem``; it denies SysV and
   POSIX message-queue IPC for itself and every child (the IPC namespace is the zygote's, shared by
   its children: a segment one task left would reach the next);
2. per ``fork`` message (JSON with three descriptors over the control socket, SCM_RIGHTS: the
   child's frame socket, its stderr socket and its input directory, opened by the agent) it makes
   the child's scratch ``<work>/tasks/<id>`` and forks;
3. the child closes everything of the zygote's (control socket, frame pipes, other children's
   pidfds), takes its own frame and stderr sockets, asks to die with the zygote, and writes one
   byte that carries its credentials (the agent learns the child's host pid from them and places
   it in a cgroup of its own before it answers);
4. the child confines itself further at once: a Landlock domain of its own whose only writable
   trees are its scratch and ``/dev/shm``, whose input is its own descriptor, which reads what the
   zygote wrote in its home before any task but no ``/tmp`` and only its own ``/proc/self`` files;
   signals and abstract sockets are scoped to the domain, so the zygote and any other process stay
   out of reach. A child forked ahead is then asked to ``rehearse`` (once in its cgroup): it runs the
   rehearsal the entry's ``prepare()`` returned, in its scratch: a task of the entry's own on the
   entry's own input, so that the pages a task's path writes are copied before the task comes, and
   answers ``rehearsed``. On the
   ``request`` frame it takes the task's rlimits, then runs ``entry.serve``;
5. the zygote reaps each child (pidfd), reports its wait status in an ``exited`` frame, and when
   the agent ``release``s it (its cgroup killed by then) removes its scratch and wipes ``/dev/shm``.
   A zygote serves one child at a time (forkserver.py), so no two tasks share its tmpfs.

Memory a child sees is the zygote's, which never held task data; modules a task imports die with
its child. What runs where is decided by the agent (forkserver.py); this module obeys it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gc
import json
import os
import re
import select
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from pod_agent.errors import SandboxError
from pod_agent.sandbox.bootstrap import EntryRehearsal, run_guarded, send_frame, serve_entry
from pod_agent.sandbox.channel import Channel
from pod_agent.sandbox.confine import ConfinePlan, apply_rlimits, confine, lower_cpu_limit
from pod_agent.sandbox.frames import read_frame

# A fork or release message is a small JSON object; its descriptors travel beside it.
CONTROL_MESSAGE_BYTES = 4096
FORK_FDS = 3  # frame socket, stderr socket, input directory
TASKS_DIR = "tasks"
# The byte a fresh child writes first; the kernel attaches its credentials (pid, uid, gid).
HELLO_BYTE = b"h"
# The zygote's /dev/shm tmpfs, writable by its children (torch shares DataLoader batches through it).
_SHARED_SHM = Path("/dev/shm")  # noqa: S108 - wiped between children, never a file made by name
_TASK_ID = re.compile(r"^[0-9a-f]{8,32}$")
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
# The IPC namespace is the zygote's, shared by all its children; workers use neither kind.
DENIED_IPC_SYSCALLS = ("shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop",
                       "semtimedop", "semctl", "mq_open", "mq_timedsend", "mq_timedreceive", "mq_notify")


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise SandboxError("zygote_failed", f"prctl({option}) failed: {os.strerror(ctypes.get_errno())}")


def _deny_ipc() -> None:
    """Stack a seccomp filter on the one the zygote already has: no SysV IPC, no POSIX queues."""
    import pyseccomp as seccomp

    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_IPC_SYSCALLS:
        try:
            flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError):
            continue
    flt.load()


def _child_scratch(work_root: Path, task_id: str) -> Path:
    if not _TASK_ID.match(task_id):
        raise SandboxError("protocol", "fork message with a malformed task id")
    return work_root / TASKS_DIR / task_id


def serve_forks(*, entry: ModuleType, rehearsal: EntryRehearsal | None, go: dict[str, Any], inbound: BinaryIO,
                out: BinaryIO) -> None:
    """The zygote's loop (after ``ready``): fork a child per ``fork`` message until the agent hangs up;
    ``rehearsal`` is what the entry's ``prepare()`` returned."""
    _prctl(_PR_SET_DUMPABLE, 0)
    _deny_ipc()
    # Children share the zygote's memory until they write it, and a full collection in a child would walk (so
    # copy) every object the zygote holds: frozen, collections walk a child's own objects only.
    gc.collect()
    gc.freeze()
    fork_plan = go["zygote"]
    control = socket.socket(fileno=int(fork_plan["control_fd"]))
    work_root = Path(go["work_dir"])
    (work_root / TASKS_DIR).mkdir(mode=0o711, exist_ok=True)
    children: dict[int, tuple[str, int]] = {}  # pidfd -> (task id, pid)
    poller = select.poll()
    poller.register(control, select.POLLIN)
    while True:
        for fd, _events in poller.poll():
            if fd != control.fileno():
                task_id, pid = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _pid, status = os.waitpid(pid, 0)
                send_frame(out, {"type": "exited", "id": task_id, "status": status})
                continue
            data, fds, _flags, _addr = socket.recv_fds(control, CONTROL_MESSAGE_BYTES, FORK_FDS)
            if not data:
                return  # the agent closed the control socket: shut down (children die with us)
            message = json.loads(data)
            if message.get("type") == "release":
                shutil.rmtree(_child_scratch(work_root, str(message["id"])), ignore_errors=True)
                _wipe(_SHARED_SHM)
                continue
            if message.get("type") != "fork" or len(fds) != FORK_FDS:
                for received in fds:
                    os.close(received)
                raise SandboxError("protocol", "control message is neither a fork with three descriptors nor "
                                   "a release")
            task_id = str(message["id"])
            scratch = _child_scratch(work_root, task_id)
            scratch.mkdir(mode=0o700)
            zygote_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                control.close()
                inbound.close()
                out.close()
                for other in children:
                    os.close(other)
                # What the zygote itself wrote in its home before any task (prepare()'s font config, caches
                # its environment points at), readable by the child; never another child's scratch.
                own = tuple(str(p) for p in work_root.iterdir() if p.name != TASKS_DIR)
                run_guarded(functools.partial(_child, entry, rehearsal, fork_plan, own, fds, scratch, zygote_pid),
                            None)
            for received in fds:
                os.close(received)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = (task_id, pid)
            poller.register(pidfd, select.POLLIN)


def _child(entry: ModuleType, rehearsal: EntryRehearsal | None, fork_plan: dict[str, Any],
           zygote_files: tuple[str, ...], fds: list[int], scratch: Path, zygote_pid: int) -> None:
    """One task in a fresh fork: own descriptors, own cgroup (the agent's), own Landlock domain."""
    frames_fd, err_fd, input_fd = fds
    os.dup2(err_fd, 2)
    os.dup2(err_fd, 1)
    os.close(err_fd)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote_pid:
        os._exit(3)
    _prctl(_PR_SET_DUMPABLE, 0)
    inbound = os.fdopen(frames_fd, "rb", buffering=0)
    out = os.fdopen(os.dup(frames_fd), "wb")
    os.write(frames_fd, HELLO_BYTE)

    def body() -> None:
        input_dir = Path(f"/proc/self/fd/{input_fd}")
        # Confined at once, before the rehearsal and the task: the task's rlimits come with its request.
        confine(ConfinePlan(rlimits={}, seccomp=False,
                            landlock_read_only=(*fork_plan["landlock_read_only"], *zygote_files, str(input_dir)),
                            landlock_read_write=(*fork_plan["landlock_read_write"], str(scratch))))
        request = _rehearsed_request(rehearsal, inbound, out, scratch)
        apply_rlimits({k: int(v) for k, v in request.get("rlimits", {}).items()})
        lower_cpu_limit(int(request["cpu_time_s"]))
        for name in ("HOME", "TMPDIR"):
            os.environ[name] = str(scratch)
        os.environ["MPLCONFIGDIR"], os.environ["XDG_CACHE_HOME"] = str(scratch / ".mpl"), str(scratch / ".cache")
        tempfile.tempdir = None
        os.chdir(scratch)
        serve_entry(entry, Channel(input_dir=input_dir, work_dir=scratch, request=request["request"], out=out))

    run_guarded(body, out)


def _rehearsed_request(rehearsal: EntryRehearsal | None, inbound: BinaryIO, out: BinaryIO,
                       scratch: Path) -> dict[str, Any]:
    """The task's ``request`` frame; a child forked ahead is first asked to ``rehearse`` (the rehearsal the
    entry's ``prepare()`` returned, called with the child's scratch, where it returned one: a task of its own,
    so that the pages a task's path writes are copied before the task comes) and answers ``rehearsed`` when
    done."""
    frame = read_frame(inbound, max_payload_bytes=0)
    if frame is not None and frame.type == "rehearse":
        if rehearsal is not None:
            rehearsal(scratch)
            gc.collect()  # the rehearsal's own garbage, before the task
        send_frame(out, {"type": "rehearsed"})
        frame = read_frame(inbound, max_payload_bytes=0)
    if frame is None or frame.type != "request":
        raise SandboxError("protocol", "expected a 'request' frame from the agent")
    return frame.header


def _wipe(directory: Path) -> None:
    """Remove everything in ``directory`` (links unfollowed), keeping the directory."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


__all__ = ["CONTROL_MESSAGE_BYTES", "FORK_FDS", "HELLO_BYTE", "serve_forks"]
