"""Test entry for the sandbox corpus: runs ``model.py`` from the input dir.

Stands in for training.worker in tests/sandbox: ``serve`` exec's the model
source, calls its ``run(channel)`` and, when that returns a dict of numpy
arrays, sends them as safetensors with ``{"returned": ...}`` extras.
"""

from __future__ import annotations

import ctypes
import time
import uuid
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15
# Set by prepare(): lets tests see when, and in which process, the worker got ready.
TOKEN = ""
PREPARED_AT = 0.0
# Set by rehearse(): the cgroup a fork-server child rehearsed in, before its task.
REHEARSED_IN: str | None = None


def prepare() -> Callable[[Any], None]:
    """Nothing heavy: the corpus must stay fast (only the benign model imports torch). Returns the
    rehearsal a fork-server child runs before its task."""
    global TOKEN, PREPARED_AT
    TOKEN, PREPARED_AT = uuid.uuid4().hex, time.time()
    return rehearse


def rehearse(work_dir: Any) -> None:
    """Record where the rehearsal ran (a child forked ahead rehearses once, before its task)."""
    global REHEARSED_IN
    with open("/proc/self/cgroup") as cgroup:
        REHEARSED_IN = cgroup.read()


def _name_process(comm: str) -> None:
    """Name this process (and so every child it forks) so a test can find survivors by name."""
    libc = ctypes.CDLL(None)
    libc.prctl(_PR_SET_NAME, comm.encode()[:15], 0, 0, 0)


def serve(channel: Any) -> None:
    if "comm" in channel.request():
        _name_process(channel.request()["comm"])
    source = (channel.input_dir / "model.py").read_text()
    namespace: dict[str, Any] = {"__name__": "model"}
    exec(compile(source, "model.py", "exec"), namespace)  # noqa: S102 - the staged model, run as the worker runs it
    returned = namespace["run"](channel)
    if channel.finished:
        return
    if returned is None:
        channel.result({"returned": None}, b"")
        return
    header, arrays = returned
    payload = b""
    if arrays:
        from safetensors.numpy import save

        payload = save(arrays)
    channel.result(header, payload)
