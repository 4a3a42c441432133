"""The worker's rehearsal (a train task of our own, run before any real task): it runs the worker's whole
path, leaves nothing behind in scratch or in sys.modules, and a task trains the same after it as without it,
for each model style."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from training_support import (
    DECLARATIVE_SPEC,
    MODULE_STYLE_MODEL,
    TUTORIAL_MODEL,
    RunTask,
    make_task,
    source_ref,
    spec_ref,
)

from pod_agent.errors import TrainingError
from pod_agent.protocol import ModelRef
from pod_agent.training.loading import MODULE_NAME
from pod_agent.training.rehearsal import Rehearsal, rehearse, write_rehearsal


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return write_rehearsal(tmp_path_factory.mktemp("rehearsal") / "home")


def test_the_rehearsal_runs_and_leaves_nothing_behind(rehearsal: Rehearsal, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    sys.modules.pop(MODULE_NAME, None)
    rehearse(rehearsal, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert MODULE_NAME not in sys.modules
    assert torch.get_num_threads() == threads


def test_a_failed_rehearsal_raises_its_code(rehearsal: Rehearsal, tmp_path: Path) -> None:
    broken = Rehearsal(input_dir=tmp_path / "missing", request=rehearsal.request)
    with pytest.raises(TrainingError, match="rehearsal task failed") as failed:
        rehearse(broken, tmp_path)
    assert failed.value.code == "weights_invalid"


@pytest.mark.parametrize("model", [
    source_ref(TUTORIAL_MODEL, "MyCustomModel"),
    source_ref(MODULE_STYLE_MODEL, "TabularNet", style="module"),
    spec_ref(DECLARATIVE_SPEC),
], ids=["lightning", "module", "declarative"])
def test_a_task_trains_the_same_after_a_rehearsal(
        model: ModelRef, rehearsal: Rehearsal, run_in_process: RunTask, tmp_path: Path) -> None:
    task = make_task("train", model, steps=4, batch_size=32)
    before = run_in_process(task)
    rehearse(rehearsal, tmp_path)
    after = run_in_process(task)
    assert before.failure is None
    assert after.payload == before.payload
    assert after.header == before.header
