"""SCAFFOLD's control-variate arithmetic on the pod's side (Karimireddy et al. 2020, option II).

Owns the numbers: the correction ``c - c_i`` the engine adds to every gradient (written by the agent
into the task's input as ``CORRECTION_FILE_NAME``), the pod's new control variate after a task
``c_i+ = c_i - c + (x - y_i) / (K * lr)`` (K the optimiser steps the agent counted, lr the task's learning
rate, ``y_i - x`` the checked update), and the names its change ``delta c_i = c_i+ - c_i`` travels under in
the same vector as the update (``CONTROL_PREFIX``), so that secure aggregation masks it like the weights.
Computed by the agent, outside the sandbox, from what the contract already checked: the model's code
cannot write the pod's state. numpy only (the daemon imports it); where ``c_i`` is kept is
``pod_agent.agent.scaffold``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pod_agent.errors import TrainingError

CORRECTION_FILE_NAME = "correction.safetensors"
# Prefix of the control-variate change's tensors in the update vector; no state_dict key starts with it.
CONTROL_PREFIX = "scaffold-control/"

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ControlStep:
    """A task's control-variate change (sent, masked) and the pod's new control variate (kept)."""

    delta: Arrays
    local: Arrays


def control_correction(server: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray] | None) -> Arrays:
    """``c - c_i`` per tensor (``c_i`` zero before this pod's first task of the run)."""
    if local is not None:
        _same_tensors(server, local, what="the pod's control variate")
    return {n: np.asarray(c, np.float32) - (0.0 if local is None else local[n]) for n, c in server.items()}


def control_step(
    update: Mapping[str, np.ndarray],
    *,
    server: Mapping[str, np.ndarray],
    local: Mapping[str, np.ndarray] | None,
    steps: int,
    learning_rate: float,
) -> ControlStep:
    """Option II's new ``c_i`` from this task's ``update`` (y_i - x) after ``steps`` optimiser steps."""
    if steps < 1:
        raise TrainingError("bad_request", f"SCAFFOLD needs at least one optimiser step, not {steps}")
    _same_tensors(server, update, what="the update")
    scale = 1.0 / (steps * learning_rate)
    delta = {n: (-np.asarray(c, np.float32) - scale * update[n]).astype(np.float32) for n, c in server.items()}
    before = local or {n: np.zeros_like(d) for n, d in delta.items()}
    return ControlStep(delta=delta, local={n: (before[n] + d).astype(np.float32) for n, d in delta.items()})


def tagged(delta: Mapping[str, np.ndarray]) -> Arrays:
    """The control change under the names it travels by, beside the update's own tensors."""
    return {CONTROL_PREFIX + name: a for name, a in delta.items()}


def untagged(arrays: Mapping[str, np.ndarray]) -> tuple[Arrays, Arrays]:
    """Split an aggregated vector's tensors into (the update's, the control change's)."""
    update = {n: a for n, a in arrays.items() if not n.startswith(CONTROL_PREFIX)}
    control = {n.removeprefix(CONTROL_PREFIX): a for n, a in arrays.items() if n.startswith(CONTROL_PREFIX)}
    return update, control


def _same_tensors(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], *, what: str) -> None:
    wrong = sorted(n for n in expected if n not in got or np.shape(got[n]) != np.shape(expected[n]))
    if wrong or set(got) - set(expected):
        raise TrainingError(
            "bad_request", f"{what} does not match the server's control variate (tensors {wrong or sorted(got)})"
        )
