"""The trusted first code inside a worker: ``python -I -m pod_agent.sandbox.bootstrap``.

Owns the child-side start-up order, which is the security argument:
1. take the frame pipes off stdin/stdout and point stdout at stderr (model
   prints must not corrupt frames), say ``hello``;
2. wait for ``go`` (sent once the parent has placed this tree in its cgroup),
   then confine itself (Landlock, rlimits, seccomp: confine.py);
3. import the entry module and run ``entry.prepare()`` (heavy imports; what it
   returns, if anything, is the rehearsal a fork server's children run: zygote.py),
   say ``ready`` - a warm worker parks here;
4. only now read the ``request`` frame (the task), lower limits to the
   task's, and call ``entry.serve(channel)``; or, for a fork server (the ``go``
   frame says so), serve forks instead (zygote.py), never a task itself.
Uncaught errors become a fixed failure code (a cap's word where caps.py recognises one);
their text goes to stderr only, after what they held is released (caps.py).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from pod_agent.errors import SandboxError
from pod_agent.sandbox.caps import cap_code, release_and_print
from pod_agent.sandbox.channel import Channel
from pod_agent.sandbox.confine import ConfinePlan, apply_rlimits, confine, lower_cpu_limit
from pod_agent.sandbox.frames import encode_frame, read_frame

# What an entry's prepare() may return: run by a fork server's child, in its scratch, while it waits for its
# task (zygote.py). Held by the caller of prepare(), so the entry keeps no module state for it.
EntryRehearsal = Callable[[Path], None]

# Parent -> child frames are small JSON (plan, request); nothing large ever flows in.
_MAX_INBOUND_PAYLOAD_BYTES = 0
_EXIT_PROTOCOL = 3
_PR_SET_PDEATHSIG = 1


def _take_pipes() -> tuple[BinaryIO, BinaryIO]:
    inbound = os.fdopen(os.dup(0), "rb", buffering=0)
    outbound = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return inbound, outbound


def send_frame(out: BinaryIO, header: dict[str, Any]) -> None:
    out.write(encode_frame(header))
    out.flush()


def expect_frame(inbound: BinaryIO, kind: str) -> dict[str, Any]:
    frame = read_frame(inbound, max_payload_bytes=_MAX_INBOUND_PAYLOAD_BYTES)
    if frame is None or frame.type != kind:
        raise SandboxError("protocol", f"expected a {kind!r} frame from the agent")
    return frame.header


def failure_code(exc: BaseException) -> str:
    """A fixed code for an exception that escaped the entry (its text stays on stderr)."""
    cap = cap_code(exc)
    if cap is not None:
        return cap
    if isinstance(exc, ModuleNotFoundError | ImportError):
        return "import_error"
    if isinstance(exc, SyntaxError):
        return "syntax_error"
    if isinstance(exc, SandboxError):
        return exc.code
    return "uncaught_exception"


def _run(inbound: BinaryIO, out: BinaryIO) -> None:
    send_frame(out, {"type": "hello"})
    go = expect_frame(inbound, "go")
    confine(ConfinePlan.from_json(go["plan"]))
    input_dir, work_dir = Path(go["input_dir"]), Path(go["work_dir"])
    os.chdir(work_dir)
    if go.get("entry_path"):
        sys.path.insert(0, go["entry_path"])
    entry = importlib.import_module(go["entry"])
    prepare = getattr(entry, "prepare", None)
    rehearsal = prepare() if prepare is not None else None
    send_frame(out, {"type": "ready"})
    if go.get("zygote"):
        from pod_agent.sandbox.zygote import serve_forks

        serve_forks(entry=entry, rehearsal=rehearsal, go=go, inbound=inbound, out=out)
        return
    request = expect_frame(inbound, "request")
    apply_rlimits({k: int(v) for k, v in request.get("rlimits", {}).items()})
    lower_cpu_limit(int(request["cpu_time_s"]))
    serve_entry(entry, Channel(input_dir=input_dir, work_dir=work_dir, request=request["request"], out=out))


def serve_entry(entry: ModuleType, channel: Channel) -> None:
    """Run ``entry.serve``; whatever escapes it leaves as a fixed code in a ``fail`` frame."""
    try:
        entry.serve(channel)
    except BaseException as exc:  # noqa: BLE001 - every escape must become a fixed code, never a crash text
        code = failure_code(exc)
        release_and_print(exc)
        if not channel.finished:
            channel.fail(code)
        return
    if not channel.finished:
        channel.fail("no_result")


def _die_with_agent() -> None:
    """Without bwrap's --die-with-parent, ask the kernel to SIGKILL this worker when the agent dies."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(_EXIT_PROTOCOL)


def run_guarded(body: Callable[[], None], out: BinaryIO | None) -> None:
    """Run ``body`` and exit this process without interpreter teardown (model code may have left
    threads or atexit hooks behind): 0, or after an escape before ``serve`` a ``fail`` frame with
    a fixed code (when ``out`` is open) and exit status 3."""
    try:
        body()
    except BaseException as exc:  # noqa: BLE001 - before serve(): report a code, exit non-zero
        code = failure_code(exc)
        release_and_print(exc)
        if out is not None:
            try:  # noqa: SIM105 - no suppress() object to allocate on the way out of a MemoryError
                send_frame(out, {"type": "fail", "reason": code})
            except (OSError, SandboxError, MemoryError):
                pass
        sys.stderr.flush()
        os._exit(_EXIT_PROTOCOL)
    sys.stderr.flush()
    if out is not None:
        out.flush()
    os._exit(0)


def main() -> None:
    _die_with_agent()
    inbound, out = _take_pipes()
    run_guarded(lambda: _run(inbound, out), out)


if __name__ == "__main__":
    main()
