"""The worker's end of the pipes, as handed to ``entry.serve(channel)``.

Owns the child-side frame sequence after the bootstrap: one ``request`` in;
any number of ``progress`` frames and exactly one ``result`` or ``fail`` out.
What the frames mean for training is training.worker's business.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, BinaryIO

from pod_agent.errors import SandboxError
from pod_agent.sandbox.frames import encode_frame

# A failure reason is a fixed code, never free text that could carry data.
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class Channel:
    """Child side of one task: the directories, the request, and the three ways to report."""

    def __init__(self, *, input_dir: Path, work_dir: Path, request: dict[str, Any], out: BinaryIO) -> None:
        self.input_dir = input_dir
        self.work_dir = work_dir
        self._request = request
        self._out = out
        self._lock = threading.Lock()
        self._finished = False

    def request(self) -> dict[str, Any]:
        """The task request the agent sent (the first frame after confinement)."""
        return self._request

    @property
    def finished(self) -> bool:
        return self._finished

    def _send(self, header: dict[str, Any], payload: bytes = b"", *, final: bool) -> None:
        with self._lock:
            if self._finished:
                raise SandboxError("protocol", "the task already sent its result or failure")
            frame = encode_frame(header, payload)
            self._out.write(frame)
            self._out.flush()
            self._finished = final

    def progress(self, event: dict[str, Any]) -> None:
        """Stream a small JSON progress event (epoch, step, loss ...) to the agent."""
        self._send({"type": "progress", "event": event}, final=False)

    def result(self, header: dict[str, Any], payload: bytes) -> None:
        """Send the result: a JSON header (metrics, n_rows, tensor table) and safetensors bytes."""
        self._send({"type": "result", "header": header}, payload, final=True)

    def fail(self, reason: str) -> None:
        """Report failure with a short fixed code (details belong on stderr, which stays local)."""
        if not _REASON.match(reason):
            reason = "invalid_reason"
        self._send({"type": "fail", "reason": reason}, final=True)
