"""The training worker run for real through the SandboxRunner, as the agent runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load as load_numpy
from training_support import TUTORIAL_MODEL, make_task, request_for, source_ref, stage_input

from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
from pod_agent.data.task_input import TaskInput
from pod_agent.errors import SandboxError, SandboxUnavailable
from pod_agent.policy.codes import failure_code_for
from pod_agent.sandbox import SandboxJob, SandboxRunner, best_level, probe_layers
from pod_agent.training import TensorSpec, check_result, reported_rows
from pod_agent.training.local import initial_weights

SANDBOX_USER = "pod-sandbox"
ENSURE_USER = Path(__file__).parents[1] / "sandbox" / "ensure_sandbox_user.py"
ENTRY = "pod_agent.training.worker"


def _levels() -> list[str]:
    subprocess.run([sys.executable, str(ENSURE_USER), SANDBOX_USER], check=True)
    best = best_level(probe_layers(SecuritySection(sandbox="none", sandbox_user=SANDBOX_USER)))
    return ["none"] if best == "none" else ["none", best]


async def _run(level: str, task_input: TaskInput, tmp_path: Path, task: Any, events: list[dict[str, Any]],
               *, memory_mb: int = 4096) -> Any:
    input_dir = stage_input(task, data_file=task_input.path, into=tmp_path)
    runner = SandboxRunner(
        SecuritySection(sandbox=level, sandbox_user=SANDBOX_USER),
        SandboxLimitsSection(wall_timeout_s=240, memory_mb=memory_mb, warm_worker=False),
    )
    async with runner:
        job = SandboxJob(entry=ENTRY, input_dir=input_dir, work_dir=tmp_path / "work",
                         request=request_for(task, task_input.datastructure))
        return await runner.run(job, on_progress=events.append)


@pytest.mark.parametrize("level", _levels())
async def test_tutorial_model_trains_through_the_sandbox_and_passes_the_contract(
    adult_input: TaskInput, tmp_path: Path, level: str
) -> None:
    task = make_task("train", source_ref(TUTORIAL_MODEL, "MyCustomModel"), steps=30)
    events: list[dict[str, Any]] = []
    outcome = await _run(level, adult_input, tmp_path, task, events)
    assert task.model is not None
    starting = initial_weights(
        task.model, datastructure=adult_input.datastructure, hyperparameters=task.hyperparameters
    )
    expected = {name: TensorSpec(tuple(array.shape)) for name, array in starting.items()}
    rows = reported_rows(task, adult_input.datastructure["n_rows"])
    checked = check_result(outcome, task=task, expected=expected, rows=rows, max_bytes=64 << 20)
    assert set(checked.arrays) == {"_model.0.weight", "_model.0.bias", "_model.3.weight", "_model.3.bias"}
    assert checked.arrays["_model.0.weight"].shape == (500, adult_input.datastructure["input_size"])
    assert "val_acc" in checked.metrics
    assert events[0] == {"stage": "training", "epoch": 0, "step": 0}
    assert any(e["stage"] == "validating" for e in events)
    assert load_numpy(outcome.payload).keys() == checked.arrays.keys()


async def test_a_broken_model_fails_through_the_sandbox_with_its_code(adult_input: TaskInput, tmp_path: Path) -> None:
    source = "from pod_agent.sdk import PodModel\nclass Broken(PodModel)\n    pass\n"
    task = make_task("train", source_ref(source, "Broken"), steps=1)
    with pytest.raises(SandboxError) as failed:
        await _run("none", adult_input, tmp_path, task, [])
    assert failed.value.code == "task_failed"
    assert failed.value.detail == "syntax_error"
    assert not isinstance(failed.value, SandboxUnavailable)


@pytest.mark.parametrize("level", _levels())
async def test_a_model_allocating_twice_the_memory_cap_fails_as_memory_exceeded(
    adult_input: TaskInput, tmp_path: Path, level: str
) -> None:
    memory_mb = 3072
    source = TUTORIAL_MODEL.replace(
        "        x, y = batch\n        y_hat = self(x)\n",
        f"        x, y = batch\n        hoard = torch.ones({2 * memory_mb} << 20, dtype=torch.uint8)\n"
        "        y_hat = self(x)\n",
        1,
    )
    assert "hoard" in source
    task = make_task("train", source_ref(source, "MyCustomModel"), steps=3)
    with pytest.raises(SandboxError) as failed:
        await _run(level, adult_input, tmp_path, task, [], memory_mb=memory_mb)
    # torch's allocator fails at the data rlimit with a RuntimeError, which Lightning and the
    # engine wrap as training_error; the worker names the cap instead.
    assert (failed.value.code, failed.value.detail) == ("task_failed", "memory_exceeded")
    assert failure_code_for(failed.value) == "memory_exceeded"


async def test_a_warm_worker_takes_the_task_and_is_replaced_after_it(adult_input: TaskInput, tmp_path: Path) -> None:
    task = make_task("evaluate", source_ref(TUTORIAL_MODEL, "MyCustomModel"))
    # One parked worker is enough to show the path (each start imports torch and Lightning).
    runner = SandboxRunner(
        SecuritySection(sandbox="none", sandbox_user=SANDBOX_USER),
        SandboxLimitsSection(wall_timeout_s=240, memory_mb=4096, warm_worker=True, warm_pool=1),
    )
    async with runner:
        await runner.prewarm(ENTRY)
        assert await runner.wait_warm(ENTRY)
        input_dir = stage_input(task, data_file=adult_input.path, into=tmp_path)
        job = SandboxJob(entry=ENTRY, input_dir=input_dir, work_dir=tmp_path / "work",
                         request=request_for(task, adult_input.datastructure))
        outcome = await runner.run(job)
        rows = reported_rows(task, adult_input.datastructure["n_rows"])
        assert "val_loss" in check_result(outcome, task=task, expected=None, rows=rows, max_bytes=1 << 20).metrics
        assert await runner.wait_warm(ENTRY)
