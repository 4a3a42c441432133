"""SCAFFOLD on the pod: where its control variate ``c_i`` lives and how a task changes it.

Owns the agent's part of a SCAFFOLD train task: reading the server's control variate ``c`` (fetched
like the weights, pinned by sha256; its tensors must be exactly the pinned weights', float32 and
finite), reading ``c_i`` from the pod's state (keyed by the task's modeller and run; zero at first),
writing the engine's correction ``c - c_i`` into the task's input, and once the checked update is in:
the change ``delta c_i`` appended to the update (so it is clipped, noised and masked with it, and never
leaves otherwise) and the new ``c_i`` kept in the state after the result is out. The arithmetic is
``pod_agent.training.control``'s; the state table is ``PodState.control_variate``'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pod_agent.errors import TaskFailed, TrainingError
from pod_agent.policy import FailureCode
from pod_agent.protocol import ScaffoldParams
from pod_agent.state import PodState


@dataclass(frozen=True)
class ScaffoldInput:
    """The control variates a task starts from: the server's ``c`` and this pod's ``c_i`` (None: zero), and
    whose they are (the task's modeller and run)."""

    server: dict[str, np.ndarray]
    local: dict[str, np.ndarray] | None
    modeller_id: str
    run_id: str


@dataclass(frozen=True)
class ScaffoldOutput:
    """The update with the control change appended, and the pod's new control variate to keep."""

    arrays: dict[str, Any]
    local: dict[str, np.ndarray]
    modeller_id: str
    run_id: str


def prepare_scaffold(
    params: ScaffoldParams, *, modeller_id: str, control_file: Path, expected: Mapping[str, tuple[int, ...]],
    state: PodState, input_dir: Path,
) -> ScaffoldInput:
    """Check the fetched ``c`` against the pinned weights' tensors, read ``c_i``, write ``c - c_i`` for the engine."""
    from safetensors import SafetensorError
    from safetensors.numpy import load, load_file, save_file

    from pod_agent.training import CORRECTION_FILE_NAME, control_correction

    try:
        server = load_file(str(control_file))
    except (OSError, SafetensorError) as exc:
        raise TaskFailed(
            FailureCode.WEIGHTS_UNAVAILABLE.value, f"the SCAFFOLD control variate is unreadable: {exc}"
        ) from exc
    wrong = sorted(set(server) ^ set(expected)) or sorted(n for n in server if tuple(server[n].shape) != expected[n])
    bad = sorted(n for n, a in server.items() if a.dtype != np.float32 or not np.isfinite(a).all())
    if wrong or bad:
        raise TaskFailed(
            FailureCode.WEIGHTS_UNAVAILABLE.value,
            f"the SCAFFOLD control variate's tensors differ from the pinned weights' ({wrong or bad})",
        )
    kept = state.control_variate(modeller_id=modeller_id, run_id=params.run_id)
    local = None if kept is None else load(kept)
    if local is not None and (set(local) != set(server) or any(local[n].shape != server[n].shape for n in server)):
        local = None  # the run's model changed shape: this pod's control variate starts again from zero
    save_file(control_correction(server, local), str(input_dir / CORRECTION_FILE_NAME))
    return ScaffoldInput(server=server, local=local, modeller_id=modeller_id, run_id=params.run_id)


def extend_update(
    start: ScaffoldInput, arrays: Mapping[str, Any], *, steps: int, learning_rate: float
) -> ScaffoldOutput:
    """The checked update plus this task's ``delta c_i`` (tagged names), and the new ``c_i``."""
    from pod_agent.training import control_step, tagged

    update = {n: np.asarray(a, dtype=np.float32) for n, a in arrays.items() if n in start.server}
    try:
        step = control_step(update, server=start.server, local=start.local, steps=steps, learning_rate=learning_rate)
    except TrainingError as exc:
        raise TaskFailed(FailureCode.RESULT_REJECTED.value, f"SCAFFOLD control step failed: {exc!r}") from exc
    if not all(math.isfinite(float(np.abs(d).max(initial=0.0))) for d in step.delta.values()):
        raise TaskFailed(FailureCode.RESULT_REJECTED.value, "the SCAFFOLD control change is not finite")
    return ScaffoldOutput(
        arrays={**arrays, **tagged(step.delta)}, local=step.local, modeller_id=start.modeller_id, run_id=start.run_id
    )


def keep_scaffold(output: ScaffoldOutput, *, state: PodState) -> None:
    """Store the new ``c_i`` once the task's result is out (a failed task leaves the old one)."""
    from safetensors.numpy import save

    state.keep_control_variate(
        modeller_id=output.modeller_id, run_id=output.run_id, tensors=save(dict(sorted(output.local.items()))),
        now=int(time.time()),
    )
