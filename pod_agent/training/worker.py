"""The sandboxed worker: what ``pod_agent.sandbox.bootstrap`` runs inside the confined child.

Owns the entry contract with the sandbox: ``prepare()`` does the heavy imports
(torch, Lightning, torchmetrics, the SDK) before any task input exists, so a warm
worker is ready; ``serve(channel)`` reads the request, runs it with
``engine.run_task`` and answers with exactly one ``channel.result`` or
``channel.fail(code)``. Failure codes are fixed strings (``engine.py`` and
``loading.py`` list them); details and tracebacks go to this process's stderr,
which the agent keeps in its local log and never forwards.
This module imports nothing heavy at import time.
"""

from __future__ import annotations

import logging
import sys
import traceback
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

INTERNAL_ERROR = "internal_error"
_HEAVY_MODULES = ("torch", "pytorch_lightning", "torchmetrics", "safetensors.torch", "pod_agent.training.engine")


class WorkerChannel(Protocol):
    """The child side of the sandbox channel, as this worker uses it."""

    input_dir: Path
    work_dir: Path

    def request(self) -> dict[str, Any]: ...
    def progress(self, event: dict[str, Any]) -> None: ...
    def result(self, header: dict[str, Any], payload: bytes) -> None: ...
    def fail(self, reason: str) -> None: ...


def prepare() -> None:
    """Import everything a task needs, so the first training step does not wait for imports."""
    for name in _HEAVY_MODULES:
        import_module(name)
    # Lightning's info lines (accelerator banners) are noise in the agent's log.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def serve(channel: WorkerChannel) -> None:
    """Run the one task this worker gets; report a result or a fixed failure code."""
    from pod_agent.errors import TrainingError
    from pod_agent.training.engine import run_task

    try:
        request = channel.request()
        output = run_task(request, input_dir=channel.input_dir, work_dir=channel.work_dir, progress=channel.progress)
    except TrainingError as exc:
        print(f"pod-agent worker: {exc}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        channel.fail(exc.code)
        return
    except Exception:
        traceback.print_exc(file=sys.stderr)
        channel.fail(INTERNAL_ERROR)
        return
    channel.result(output.header, output.payload)
