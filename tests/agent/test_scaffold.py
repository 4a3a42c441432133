"""SCAFFOLD on the pod: its control variate lives in the state DB (surviving a restart), only its change
leaves (appended to the update, so it is masked with it), and a hostile server control variate is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pod_agent.agent.scaffold import extend_update, keep_scaffold, prepare_scaffold
from pod_agent.errors import TaskFailed
from pod_agent.protocol import ScaffoldParams, WeightsRef
from pod_agent.state import PodState
from pod_agent.training import CONTROL_PREFIX, CORRECTION_FILE_NAME

SHAPES = {"layer.weight": (2, 3), "layer.bias": (2,)}
RUN = "12345678-1234-1234-1234-123456789abc"
LR, STEPS = 0.1, 5


PARAMS = ScaffoldParams(run_id=RUN, control=WeightsRef(blob_id="c", sha256="12" * 32, size_bytes=1))
MODELLER = "cd" * 32


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}


def _round(state: PodState, tmp: Path, server: dict[str, np.ndarray], update: dict[str, np.ndarray]) -> Path:
    """One task's SCAFFOLD part on the pod: prepare the input, extend the checked update, keep c_i."""
    control, input_dir = tmp / "control.safetensors", tmp / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    save_file(server, str(control))
    start = prepare_scaffold(
        PARAMS, modeller_id=MODELLER, control_file=control, expected=SHAPES, state=state, input_dir=input_dir
    )
    out = extend_update(start, update, steps=STEPS, learning_rate=LR)
    # The change travels in the same vector, next to the update's own tensors.
    assert set(out.arrays) == set(update) | {CONTROL_PREFIX + n for n in SHAPES}
    keep_scaffold(out, state=state)
    return input_dir / CORRECTION_FILE_NAME


def test_the_pods_control_variate_survives_a_restart_and_corrects_the_next_task(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    server1, update1, server2 = _arrays(1), _arrays(2), _arrays(3)
    with PodState.open(db) as state:
        first = load_file(str(_round(state, tmp_path / "t1", server1, update1)))
    # Before its first task the pod's c_i is zero: the correction is the server's c.
    for name in SHAPES:
        np.testing.assert_allclose(first[name], server1[name])
    # The agent restarts: a new process opens the same state database.
    with PodState.open(db) as state:
        second = load_file(str(_round(state, tmp_path / "t2", server2, _arrays(4))))
    c_i = {n: -server1[n] - update1[n] / (STEPS * LR) for n in SHAPES}  # option II from c_i = 0
    for name in SHAPES:
        np.testing.assert_allclose(second[name], server2[name] - c_i[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hostile", ["extra", "nan", "shape"])
def test_a_server_control_variate_unlike_the_pinned_weights_is_refused(tmp_path: Path, hostile: str) -> None:
    server = _arrays(1)
    if hostile == "extra":
        server["smuggled"] = np.zeros(4, np.float32)
    elif hostile == "nan":
        server["layer.bias"][0] = np.nan
    else:
        server["layer.bias"] = np.zeros(3, np.float32)
    save_file(server, str(tmp_path / "control.safetensors"))
    with PodState.open(tmp_path / "state.sqlite") as state, pytest.raises(TaskFailed) as failed:
        prepare_scaffold(PARAMS, modeller_id=MODELLER, control_file=tmp_path / "control.safetensors",
                         expected=SHAPES, state=state, input_dir=tmp_path)
    assert failed.value.code == "weights_unavailable"
    assert not (tmp_path / CORRECTION_FILE_NAME).exists()
