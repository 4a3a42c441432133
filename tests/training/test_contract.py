"""The agent's check of sandbox output: only the task's tensors and plain metrics pass."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as save_numpy
from training_support import TUTORIAL_MODEL, make_task, source_ref

from pod_agent.errors import ContractViolation
from pod_agent.training import TensorSpec, check_result, expected_from_safetensors, reported_rows

TASK = make_task("train", source_ref(TUTORIAL_MODEL, "MyCustomModel"))
EXPECTED = {"w": TensorSpec((2, 3)), "b": TensorSpec((2,))}
GOOD = {"w": np.ones((2, 3), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


@dataclass
class Outcome:
    header: dict[str, Any]
    payload: bytes = b""


def outcome_of(arrays: dict[str, np.ndarray], *, metrics: dict[str, Any] | None = None, n_rows: Any = 10,
               described: dict[str, Any] | None = None) -> Outcome:
    tensors = described if described is not None else {
        n: {"shape": list(a.shape), "dtype": "F32"} for n, a in arrays.items()
    }
    header = {"metrics": metrics if metrics is not None else {"val_loss": 0.5}, "n_rows": n_rows, "tensors": tensors}
    return Outcome(header, save_numpy(arrays) if arrays else b"")


def check(outcome: Outcome, **kwargs: Any) -> Any:
    """``check_result`` with the agent's own row count equal to the header's, unless ``rows`` is given."""
    claimed = outcome.header.get("n_rows") if isinstance(outcome.header, dict) else None
    rows = claimed if isinstance(claimed, int) and not isinstance(claimed, bool) else 10
    options: dict[str, Any] = {"task": TASK, "expected": EXPECTED, "rows": rows, "max_bytes": 1 << 20} | kwargs
    return check_result(outcome, **options)


def test_a_row_count_the_sandbox_chose_is_rejected() -> None:
    # 48 bits of a target sequence written into n_rows: the count that leaves must be the agent's own.
    with pytest.raises(ContractViolation, match="is not the prepared split's 800 rows") as rejected:
        check(outcome_of(GOOD, n_rows=300253683450116), rows=800)
    assert rejected.value.code == "bad_header"


def test_the_rows_a_result_reports_are_counted_by_the_agent_per_kind() -> None:
    split_rows = {"train": 800, "validation": 100, "test": 90}
    evaluate = make_task("evaluate", source_ref(TUTORIAL_MODEL, "MyCustomModel"))
    predict_validation = make_task("predict", source_ref(TUTORIAL_MODEL, "MyCustomModel"),
                                   extra={"predict_split": "validation"})
    assert [reported_rows(t, split_rows) for t in (TASK, evaluate, predict_validation)] == [800, 90, 100]


def test_a_well_formed_update_passes_with_its_arrays_and_metrics() -> None:
    checked = check(outcome_of(GOOD, metrics={"val_loss": 0.5, "val_acc": 0.8}))
    assert set(checked.arrays) == {"w", "b"}
    assert checked.metrics == {"val_loss": 0.5, "val_acc": 0.8}
    assert checked.n_rows == 10


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        (GOOD | {"extra": np.ones(1, dtype=np.float32)}, "tensor_names"),
        ({"W": GOOD["w"], "b": GOOD["b"]}, "tensor_names"),
        ({"w": GOOD["w"]}, "tensor_names"),
        (GOOD | {"w": np.ones((3, 2), dtype=np.float32)}, "tensor_shape"),
        (GOOD | {"b": np.array([np.nan, 0], dtype=np.float32)}, "non_finite"),
        (GOOD | {"b": np.array([np.inf, 0], dtype=np.float32)}, "non_finite"),
    ],
    ids=["extra", "renamed", "missing", "shape", "nan", "inf"],
)
def test_tensors_breaking_the_contract_are_rejected(arrays: dict[str, np.ndarray], reason: str) -> None:
    with pytest.raises(ContractViolation, match=reason) as rejected:
        check(outcome_of(arrays))
    assert rejected.value.code == reason


def test_non_float32_tensors_are_rejected() -> None:
    arrays = GOOD | {"b": np.zeros(2, dtype=np.int64)}
    with pytest.raises(ContractViolation) as rejected:
        check(
            outcome_of(arrays, described={"w": {"shape": [2, 3], "dtype": "F32"}, "b": {"shape": [2], "dtype": "I64"}})
        )
    assert rejected.value.code == "bad_dtype"
    with pytest.raises(ContractViolation) as rejected:
        check(
            outcome_of(arrays, described={"w": {"shape": [2, 3], "dtype": "F32"}, "b": {"shape": [2], "dtype": "F32"}})
        )
    assert rejected.value.code == "bad_dtype"


def test_payload_over_the_cap_is_rejected_before_parsing() -> None:
    with pytest.raises(ContractViolation, match="over the cap") as rejected:
        check(outcome_of(GOOD), max_bytes=10)
    assert rejected.value.code == "too_large"


@pytest.mark.parametrize(
    "header",
    [
        {"metrics": {}, "n_rows": 1},
        {"metrics": {}, "n_rows": -1, "tensors": {}},
        {"metrics": {}, "n_rows": True, "tensors": {}},
        {"metrics": {}, "n_rows": 1, "tensors": {}, "note": "hi"},
        {"metrics": {}, "n_rows": 1, "tensors": {"w": [2, 3]}},
        {"metrics": {"val_loss": "0.5"}, "n_rows": 1, "tensors": {}},
        {"metrics": {"val_loss": True}, "n_rows": 1, "tensors": {}},
        {"metrics": {}, "n_rows": 1, "tensors": {"w": {"shape": [2], "dtype": "F32", "offsets": [0, 8]}}},
        [1, 2],
    ],
    ids=[
        "missing-key",
        "negative-rows",
        "bool-rows",
        "extra-key",
        "bad-description",
        "string-metric",
        "bool-metric",
        "extra-tensor-key",
        "not-an-object",
    ],
)
def test_malformed_headers_are_rejected(header: Any) -> None:
    with pytest.raises(ContractViolation) as rejected:
        check(Outcome(header))
    assert rejected.value.code == "bad_header"


def test_a_header_parse_failure_names_no_key_or_value_the_worker_chose() -> None:
    header = {"metrics": {}, "n_rows": 1, "tensors": {"row_17_is_hiv_positive": {"shape": ["secret"], "dtype": "F32"}},
              "extra_secret_key": "secret value"}
    with pytest.raises(ContractViolation) as rejected:
        check(Outcome(header))
    assert rejected.value.detail == ("result header does not parse: tensors.<key>.shape.0: int_type; "
                                     "<key>: extra_forbidden")
    assert rejected.value.__cause__ is None and rejected.value.__suppress_context__


@pytest.mark.parametrize(
    "metrics",
    [{"val_loss": float("nan")}, {"val loss; rm": 1.0}, {f"m{i}": 1.0 for i in range(100)}],
    ids=["nan", "odd-name", "too-many"],
)
def test_metrics_must_be_finite_numbers_with_plain_names(metrics: dict[str, Any]) -> None:
    with pytest.raises(ContractViolation) as rejected:
        check(outcome_of(GOOD, metrics=metrics))
    assert rejected.value.code == "bad_metric"


def test_a_train_result_without_pinned_weights_to_check_against_is_rejected() -> None:
    with pytest.raises(ContractViolation, match="pinned none") as rejected:
        check(outcome_of(GOOD), expected=None)
    assert rejected.value.code == "tensor_names"


def test_an_extra_tensor_next_to_the_pinned_ones_is_rejected() -> None:
    rows = GOOD | {"rows": np.arange(12, dtype=np.float32).reshape(3, 4)}
    with pytest.raises(ContractViolation) as rejected:
        check(outcome_of(rows))
    assert rejected.value.code == "tensor_names"


def test_payload_that_disagrees_with_its_header_is_rejected() -> None:
    outcome = outcome_of(GOOD)
    outcome.payload = save_numpy({"w": GOOD["w"], "c": GOOD["b"]})
    with pytest.raises(ContractViolation) as rejected:
        check(outcome)
    assert rejected.value.code == "bad_payload"
    outcome.payload = b"\x00" * 16
    with pytest.raises(ContractViolation) as rejected:
        check(outcome)
    assert rejected.value.code == "bad_payload"


def test_evaluate_may_return_no_tensors() -> None:
    task = make_task("evaluate", source_ref(TUTORIAL_MODEL, "MyCustomModel"))
    assert check(outcome_of({}), task=task).arrays == {}
    with pytest.raises(ContractViolation) as rejected:
        check(outcome_of(GOOD), task=task)
    assert rejected.value.code == "unexpected_tensors"


def test_predictions_need_enough_rows_few_columns_and_nothing_else() -> None:
    task = make_task("predict", source_ref(TUTORIAL_MODEL, "MyCustomModel"))
    preds = {"predictions": np.full((30, 2), 0.5, dtype=np.float32)}
    assert check(outcome_of(preds, n_rows=30, metrics={}), task=task, min_rows=20).arrays["predictions"].shape == (
        30,
        2,
    )
    for arrays, n_rows, reason in (
        (preds, 30, "too_few_rows"),
        (preds | {"inputs": np.zeros((30, 5), dtype=np.float32)}, 30, "tensor_names"),
        (preds, 29, "tensor_shape"),
        ({"predictions": np.zeros((30, 17), dtype=np.float32)}, 30, "too_many_columns"),
    ):
        with pytest.raises(ContractViolation) as rejected:
            check(
                outcome_of(arrays, n_rows=n_rows, metrics={}),
                task=task,
                min_rows=31 if reason == "too_few_rows" else 20,
            )
        assert rejected.value.code == reason


def test_expected_specs_come_from_the_floating_tensors_of_a_weights_file() -> None:
    blob = save_numpy(GOOD | {"n": np.zeros((), dtype=np.int64)})
    assert expected_from_safetensors(blob) == EXPECTED
    broken = struct.pack("<Q", 1000) + json.dumps({}).encode()
    with pytest.raises(ContractViolation):
        expected_from_safetensors(broken)


def test_the_contract_module_does_not_need_torch() -> None:
    import subprocess
    import sys

    code = "import sys, pod_agent.training.contract; print(any(m.split('.')[0] == 'torch' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("table", "message"),
    [(b'{"w":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests JSON deeper"),
     (b"[1]", "not a JSON object of tensor entries"), (b'{"w": 3}', "not a JSON object of tensor entries")],
)
def test_a_weights_header_nested_too_deep_or_of_the_wrong_shape_is_a_bad_payload(table: bytes, message: str) -> None:
    with pytest.raises(ContractViolation, match=message) as rejected:
        expected_from_safetensors(struct.pack("<Q", len(table)) + table)
    assert rejected.value.code == "bad_payload"
