"""The typed messages across the sandbox wall: exactly their fields, of exactly their types."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError
from training_support import TUTORIAL_MODEL, make_task, source_ref

from pod_agent.training import (
    TrainerSettings,
    WorkerPrivacy,
    WorkerProgress,
    WorkerRequest,
    WorkerResultHeader,
    parse_progress,
)

TASK = make_task("train", source_ref(TUTORIAL_MODEL, "MyCustomModel"), steps=3)


def _request() -> dict[str, Any]:
    return WorkerRequest(
        task=TASK, datastructure={"input_size": 3}, trainer=TrainerSettings(accelerator="cpu", devices=1, threads=2),
        privacy=WorkerPrivacy(min_rows=20), public_schema={"columns": []},
    ).model_dump(mode="json")


def _header() -> dict[str, Any]:
    return {"metrics": {"val_loss": 0.5, "steps": 3}, "n_rows": 10, "tensors": {"w": {"shape": [2, 3], "dtype": "F32"}}}


def test_a_request_survives_the_trip_through_json() -> None:
    raw = _request()
    parsed = WorkerRequest.model_validate(raw)
    assert parsed.task == TASK
    assert parsed.privacy.min_rows == 20 and parsed.trainer.threads == 2
    assert parsed.model_dump(mode="json") == raw


def _with(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    inner = raw
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("note",), "hi"), (("trainer", "gpu_index"), 0), (("privacy", "max_rows"), 5), (("task", "extra"), 1),
        (("privacy", "min_rows"), "20"), (("privacy", "min_rows"), 0), (("privacy", "min_rows"), True),
        (("trainer", "accelerator"), "tpu"), (("trainer", "devices"), "1"), (("trainer", "threads"), 0),
        (("trainer", "seed"), 1.5), (("datastructure",), []), (("public_schema",), "columns"), (("task",), "train"),
    ],
    ids=["extra-top", "extra-trainer", "extra-privacy", "extra-task", "string-min-rows", "zero-min-rows",
         "bool-min-rows", "unknown-accelerator", "string-devices", "zero-threads", "float-seed", "list-datastructure",
         "string-schema", "string-task"],
)
def test_a_request_with_an_unknown_key_or_a_wrong_type_is_refused(path: tuple[str, ...], value: Any) -> None:
    with pytest.raises(ValidationError):
        WorkerRequest.model_validate(_with(_request(), path, value))


def test_a_request_must_state_the_privacy_floor() -> None:
    raw = _request()
    del raw["privacy"]
    with pytest.raises(ValidationError, match="privacy"):
        WorkerRequest.model_validate(raw)


def test_a_result_header_parses_into_its_three_fields() -> None:
    header = WorkerResultHeader.model_validate(_header())
    assert header.metrics == {"val_loss": 0.5, "steps": 3.0} and header.n_rows == 10
    assert header.tensors["w"].shape == [2, 3] and header.tensors["w"].dtype == "F32"
    assert header.model_dump(mode="json") == _header() | {"metrics": {"val_loss": 0.5, "steps": 3.0}}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("note",), "hi"), (("tensors", "w", "offsets"), [0, 24]), (("n_rows",), "10"), (("n_rows",), 10.0),
        (("n_rows",), True), (("n_rows",), -1), (("metrics", "val_loss"), "0.5"), (("metrics", "val_loss"), True),
        (("metrics", "val_loss"), None), (("tensors", "w", "shape"), [2, -3]), (("tensors", "w", "shape"), [2, "3"]),
        (("tensors", "w", "shape"), [2, 3.0]), (("tensors", "w", "dtype"), 32), (("tensors", "w"), [2, 3]),
        (("metrics",), [["val_loss", 0.5]]),
    ],
    ids=["extra-key", "extra-tensor-key", "string-rows", "float-rows", "bool-rows", "negative-rows", "string-metric",
         "bool-metric", "null-metric", "negative-dim", "string-dim", "float-dim", "int-dtype", "list-description",
         "list-metrics"],
)
def test_a_result_header_with_an_unknown_key_or_a_wrong_type_is_refused(path: tuple[str, ...], value: Any) -> None:
    with pytest.raises(ValidationError):
        WorkerResultHeader.model_validate(_with(_header(), path, value))


def test_the_models_are_frozen() -> None:
    header = WorkerResultHeader.model_validate(_header())
    with pytest.raises(ValidationError):
        header.n_rows = 1_000_000


def test_progress_parses_stage_epoch_step_and_loss_only() -> None:
    assert parse_progress({"stage": "training", "epoch": 1, "step": 40, "loss": 0.25}) == WorkerProgress(
        stage="training", epoch=1, step=40, loss=0.25)
    assert parse_progress({"stage": "validating"}) == WorkerProgress(stage="validating")


@pytest.mark.parametrize(
    "raw",
    [
        {"stage": "validating", "step": 3, "metrics": {"val_acc": 0.9}}, {"stage": "training", "note": "row 17"},
        {"stage": "done"}, {"stage": "failed"}, {"stage": "uploading"}, {"epoch": 1},
        {"stage": "training", "loss": float("nan")}, {"stage": "training", "loss": float("inf")},
        {"stage": "training", "loss": "0.5"}, {"stage": "training", "epoch": True}, {"stage": "training", "step": "3"},
        {"stage": "training", "step": -1}, {"stage": "training", "step": 2.0}, ["training", 1], "training", None, 7,
    ],
    ids=["metrics", "extra-key", "done", "failed", "uploading", "no-stage", "nan-loss", "inf-loss", "string-loss",
         "bool-epoch", "string-step", "negative-step", "float-step", "list", "string", "null", "int"],
)
def test_malformed_progress_parses_as_none(raw: object) -> None:
    assert parse_progress(raw) is None


def test_the_wall_module_does_not_need_torch() -> None:
    code = "import sys, pod_agent.training.wall; print(any(m.split('.')[0] == 'torch' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
