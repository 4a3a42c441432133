"""The sandboxed worker: what ``pod_agent.sandbox.bootstrap`` runs inside the confined child.

Owns the entry contract with the sandbox: ``prepare()`` does the heavy imports
(torch, Lightning, torchmetrics, the SDK) and runs a rehearsal task of our own (``rehearsal.py``)
before any task input exists, and keeps Lightning's scan of the installed entry points from then on,
so a warm worker (or a fork server's child) is ready; it returns that rehearsal, which a fork server's
child runs again while it waits for its task; ``serve(channel)`` parses the request
(``wall.WorkerRequest``; ``bad_request`` when it does not parse), runs it with ``engine.run_task`` and
answers with exactly one ``channel.result`` (a ``wall.WorkerResultHeader``) or
``channel.fail(code)``. Failure codes are fixed strings (``engine.py`` and
``loading.py`` list them), except that a failure caused by one of the sandbox's caps
(``sandbox.caps``: memory, file size) is named by the cap whatever the engine
wrapped it in. Details and tracebacks go to this process's stderr, which the agent
keeps in its local log and never forwards; known-benign noise (a Lightning warning,
fontconfig's missing-config message) is silenced at its source in ``prepare()``, which also puts
Hugging Face libraries (a model source may build a ``transformers``/``peft`` model from a config) offline,
with their caches in the worker's scratch: no download is tried and no host cache is read.
This module imports nothing heavy at import time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
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


# Known-benign noise, silenced where it starts so that what the worker writes to stderr means something.
# Our SplitBatches defines __len__ and loads in-process (no DataLoader workers), the case Lightning's
# warning is not about.
_BENIGN_WARNINGS = (r"Your `IterableDataset` has `__len__` defined",)
# matplotlib (imported by torchmetrics) runs fc-list while building its font list; the sandbox has no
# /etc/fonts, so fontconfig prints "Cannot load default config file". The worker draws nothing: an empty
# config (no system fonts) is all it needs.
_EMPTY_FONTCONFIG = '<?xml version="1.0"?>\n<fontconfig/>\n'


def _silence_benign_noise() -> None:
    for message in _BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if "FONTCONFIG_FILE" not in os.environ:
        path = Path(tempfile.gettempdir()) / "pod-agent-fonts.conf"
        path.write_text(_EMPTY_FONTCONFIG)
        os.environ["FONTCONFIG_FILE"] = str(path)


# Set before any model source can import transformers or huggingface_hub, which read them at import.
_HF_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}


def _hugging_face_offline() -> None:
    os.environ.update(_HF_OFFLINE)
    os.environ["HF_HOME"] = str(Path(tempfile.gettempdir()) / "pod-agent-hf")


def prepare() -> Callable[[Path], None]:
    """Import everything a task needs and run a tiny fit once, so the first training step waits for
    neither imports nor Lightning's and autograd's first-use set-up (a fork server's children inherit
    both: sandbox.zygote). Returns the rehearsal a fork server's child runs again, with scratch under the
    directory it is given, while it waits for its task: so that the pages the task's path writes are its
    own before the task comes (``rehearsal.py``)."""
    _silence_benign_noise()
    _hugging_face_offline()
    for name in _HEAVY_MODULES:
        import_module(name)
    # Lightning's info lines (accelerator banners) are noise in the agent's log.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _scan_entry_points_once()
    return _warm_up()


def _scan_entry_points_once() -> None:
    """Every Trainer (and Fabric) looks up its callback factories by scanning the metadata of every installed
    distribution (importlib.metadata.entry_points: ~130 files read, 5-12 ms of each task's first step on 2
    cores). The installed code cannot change under a worker (bound read-only), so the scan's answer is kept
    from the warm-up's Trainer on; each Trainer still loads and calls the factories it names, as Lightning does.
    """
    from functools import cache
    from importlib.metadata import entry_points

    from lightning_fabric.utilities import registry

    registry.entry_points = cache(entry_points)  # type: ignore[assignment,attr-defined]  # kept answers


# Where prepare() writes the rehearsal, in this worker's home.
_REHEARSAL_DIR = "pod-agent-rehearsal"


def _warm_up() -> Callable[[Path], None]:
    """Write the rehearsal task (our own random rows and model: ``rehearsal.py``) and run it once: the
    lazily imported parts of Lightning, the first backward pass and AdamW's first step, and each first use
    on a task's path are paid here, before any task (about 1 s of a task's first step on 2 cores)."""
    from pod_agent.training import rehearsal

    written = rehearsal.write_rehearsal(Path(tempfile.gettempdir()) / _REHEARSAL_DIR)
    with tempfile.TemporaryDirectory(prefix="pod-agent-warm-up-") as root:
        rehearsal.rehearse(written, Path(root))
    return functools.partial(rehearsal.rehearse, written)


def serve(channel: WorkerChannel) -> None:
    """Run the one task this worker gets; report a result or a fixed failure code."""
    from pydantic import ValidationError

    from pod_agent.errors import TrainingError
    from pod_agent.sandbox import cap_code, release_and_print
    from pod_agent.training.engine import run_task
    from pod_agent.training.wall import WorkerProgress, WorkerRequest

    def progress(event: WorkerProgress) -> None:
        channel.progress(event.model_dump(mode="json", exclude_none=True))

    try:
        try:
            request = WorkerRequest.model_validate(channel.request())
        except ValidationError as exc:
            raise TrainingError("bad_request", f"request does not parse: {exc}") from exc
        output = run_task(request, input_dir=channel.input_dir, work_dir=channel.work_dir, progress=progress)
    except Exception as exc:  # noqa: BLE001 - the worker's last resort: any failure leaves as a fixed code
        # A cap in the chain outranks the engine's wrapper: training_error from a MemoryError is the cap.
        code = cap_code(exc) or (exc.code if isinstance(exc, TrainingError) else INTERNAL_ERROR)
        release_and_print(exc)
        with contextlib.suppress(MemoryError):
            print(f"pod-agent worker: task failed with {code}", file=sys.stderr)
        channel.fail(code)
        return
    channel.result(output.header.model_dump(mode="json"), output.payload)
