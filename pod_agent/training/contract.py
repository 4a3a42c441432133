"""The agent's check of what the sandbox returned, before anything leaves the host.

Owns the result contract between ``worker.py`` (inside) and the agent (outside).
Torch-free: numpy and ``safetensors.numpy`` only, so the daemon stays light.
``check_result`` runs its checks cheapest first and raises ``ContractViolation``
with a fixed ``reason`` at the first failure:

1. ``too_large``: payload over ``max_bytes``.
2. ``bad_header``: the header does not parse as a ``wall.WorkerResultHeader``
   (a missing or extra key, a wrong type, a negative count), or its ``n_rows`` is
   not the agent's own count of the split the result reports (``reported_rows``):
   the count that leaves the pod is the agent's, never a number the sandbox chose.
3. ``bad_metric``: more than ``MAX_METRICS`` metrics, a name that is not a plain
   identifier, or a value that is not a finite number. Which names and how many
   may leave the pod is decided afterwards by ``agent.egress`` (a fixed vocabulary).
4. ``unexpected_tensors``: evaluate returned tensors; ``tensor_names``: train
   returned names other than exactly those of its pinned starting weights (a train
   task without them is refused before it runs, and rejected here), predict anything but
   ``predictions``; ``tensor_shape``: a shape differs from the expected one, or
   predictions are not ``[n_rows, k]``; ``too_many_columns``: ``k`` over
   ``max_prediction_columns`` (a model that hands back its input rows as
   "predictions" needs one column per feature); ``too_few_rows``: predictions for
   fewer than ``min_rows`` rows.
5. ``bad_payload``: the payload is not safetensors or disagrees with the header.
6. ``bad_dtype``: a tensor is not in the task's wire dtype (``hyperparameters.wire_dtype``: float32
   unless the task asks for bfloat16 or float16 and the pod owner allows half precision,
   ``privacy.allow_half_precision``; predictions are always float32).
7. ``non_finite``: a NaN or infinity anywhere.

Half-precision tensors are widened to float32 here (exactly: every bfloat16 and float16 value is a
float32 value), so clipping and secure aggregation's fixed point see float32 as ever.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from pod_agent.config import DEFAULT_MAX_PREDICTION_COLUMNS
from pod_agent.errors import ContractViolation
from pod_agent.protocol import TaskPayload
from pod_agent.training.wall import TensorDescription, WorkerResultHeader

WIRE_DTYPE = "F32"
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# A task's hyperparameters.wire_dtype as the safetensors header names it.
WIRE_DTYPE_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
MAX_METRICS = 64
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,63}$")


class SandboxResult(Protocol):
    """What the sandbox runner hands back (``SandboxOutcome`` has these)."""

    @property
    def header(self) -> dict[str, Any]: ...

    @property
    def payload(self) -> bytes: ...


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str = WIRE_DTYPE


@dataclass(frozen=True)
class CheckedResult:
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    n_rows: int


def check_result(
    outcome: SandboxResult,
    *,
    task: TaskPayload,
    expected: Mapping[str, TensorSpec] | None,
    rows: int,
    max_bytes: int,
    max_prediction_columns: int = DEFAULT_MAX_PREDICTION_COLUMNS,
    min_rows: int = 1,
    allow_half_precision: bool = False,
) -> CheckedResult:
    """Validate ``outcome`` for ``task``; raises ContractViolation(reason) as listed above.

    ``expected`` is the model's exchanged tensors (``expected_from_safetensors`` of the
    task's pinned weights); a train result must match it exactly, so a train task
    without pinned weights has no acceptable result. ``rows`` is the agent's count of
    the rows the result reports (``reported_rows`` of the prepared input).
    """
    payload = outcome.payload
    if len(payload) > max_bytes:
        raise ContractViolation("too_large", f"payload of {len(payload)} bytes over the cap of {max_bytes}")
    try:
        header = WorkerResultHeader.model_validate(outcome.header)
    except ValidationError as exc:
        # Not chained: the parse error's own text quotes what the worker sent.
        raise ContractViolation("bad_header", f"result header does not parse: {_parse_errors(exc)}") from None
    n_rows = header.n_rows
    if n_rows != rows:
        raise ContractViolation("bad_header", f"n_rows {n_rows} is not the prepared split's {rows} rows")
    wire = _wire_dtype(task, allow_half_precision=allow_half_precision)
    described = _described_tensors(header.tensors, wire)
    metrics = _check_metrics(header.metrics)
    _check_names_and_shapes(described, task=task, expected=expected, n_rows=n_rows, min_rows=min_rows,
                            max_prediction_columns=max_prediction_columns)
    arrays = _decode(payload, described, wire)
    return CheckedResult(arrays=arrays, metrics=metrics, n_rows=n_rows)


def reported_rows(task: TaskPayload, split_rows: Mapping[str, int]) -> int:
    """The rows a result of ``task`` reports, counted by the agent on the prepared input: the train
    split's for train, the test split's for evaluate, the predicted split's for predict."""
    if task.kind == "train":
        return split_rows["train"]
    if task.kind == "predict":
        return split_rows.get(str(task.hyperparameters.extra.get("predict_split", "test")), 0)
    return split_rows["test"]


def expected_from_safetensors(data: bytes) -> dict[str, TensorSpec]:
    """Floating tensors named in a safetensors file's header (integer buffers are not exchanged)."""
    if len(data) < 8:
        raise ContractViolation("bad_payload", "safetensors data shorter than its length prefix")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ContractViolation("bad_payload", f"safetensors header of {size} bytes exceeds the data")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractViolation("bad_payload", f"safetensors header is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise ContractViolation(
            "bad_payload", "safetensors header nests JSON deeper than Python's recursion limit"
        ) from exc
    if not isinstance(header, dict) or not all(isinstance(info, dict) for info in header.values()):
        raise ContractViolation("bad_payload", "safetensors header is not a JSON object of tensor entries")
    return {
        name: TensorSpec(tuple(int(d) for d in info["shape"]), WIRE_DTYPE)
        for name, info in header.items()
        if name != "__metadata__" and info.get("dtype") in FLOAT_DTYPES
    }


def safetensors_head(path: Path) -> bytes:
    """A safetensors file's length prefix and header, for ``expected_from_safetensors``, without reading its
    tensor data (pinned weights may be large). A prefix promising more than the file holds reads to its end,
    which that check then refuses."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return prefix
        (size,) = struct.unpack("<Q", prefix)
        return prefix + handle.read(min(size, path.stat().st_size))


# The header's own field names; every other key in an error's location was chosen inside the sandbox.
_HEADER_FIELD_NAMES = frozenset(WorkerResultHeader.model_fields) | frozenset(TensorDescription.model_fields)
_MAX_PARSE_ERRORS = 3


def _parse_errors(exc: ValidationError) -> str:
    """Where and why the header failed to parse, without the values or keys the worker chose."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:_MAX_PARSE_ERRORS]:
        where = ".".join(str(p) if isinstance(p, int) or p in _HEADER_FIELD_NAMES else "<key>" for p in error["loc"])
        parts.append(f"{where or '<header>'}: {error['type']}")
    return "; ".join(parts) + (f" (+{exc.error_count() - _MAX_PARSE_ERRORS} more)"
                               if exc.error_count() > _MAX_PARSE_ERRORS else "")


def _wire_dtype(task: TaskPayload, *, allow_half_precision: bool) -> str:
    """The one dtype the result's tensors may have (see 6. above)."""
    if task.kind != "train":
        return WIRE_DTYPE
    wire = WIRE_DTYPE_NAMES[task.hyperparameters.wire_dtype]
    if wire != WIRE_DTYPE and not allow_half_precision:
        raise ContractViolation(
            "bad_dtype", f"the task asks for {task.hyperparameters.wire_dtype} updates and this pod does not allow "
            "half precision (privacy.allow_half_precision)"
        )
    return wire


def _described_tensors(described: Mapping[str, TensorDescription], wire: str) -> dict[str, TensorSpec]:
    out: dict[str, TensorSpec] = {}
    for name, info in described.items():
        if info.dtype != wire:
            raise ContractViolation("bad_dtype", f"tensor {name!r} has dtype {info.dtype[:16]!r}, only {wire} "
                                    "is accepted")
        out[name] = TensorSpec(tuple(info.shape), info.dtype)
    return out


def _check_metrics(raw: Mapping[str, float]) -> dict[str, float]:
    if len(raw) > MAX_METRICS:
        raise ContractViolation("bad_metric", f"{len(raw)} metrics, more than {MAX_METRICS}")
    out: dict[str, float] = {}
    for name, value in raw.items():
        if not _METRIC_NAME.match(name):
            raise ContractViolation("bad_metric", f"metric name {name[:80]!r} is not a plain identifier")
        if not math.isfinite(value):
            raise ContractViolation("bad_metric", f"metric {name!r} is {value!r}, not a finite number")
        out[name] = value
    return out


def _check_names_and_shapes(
    described: dict[str, TensorSpec],
    *,
    task: TaskPayload,
    expected: Mapping[str, TensorSpec] | None,
    n_rows: int,
    min_rows: int,
    max_prediction_columns: int,
) -> None:
    if task.kind in ("evaluate", "schema-stats"):
        if described:
            raise ContractViolation("unexpected_tensors", f"{task.kind} returned tensors {sorted(described)[:5]}")
        return
    if task.kind == "predict":
        if set(described) != {"predictions"}:
            raise ContractViolation(
                "tensor_names", f"predict returned {sorted(described)[:5]}, only 'predictions' allowed"
            )
        shape = described["predictions"].shape
        if len(shape) != 2 or shape[0] != n_rows:
            raise ContractViolation("tensor_shape", f"predictions have shape {list(shape)}, expected [{n_rows}, k]")
        if shape[1] > max_prediction_columns:
            raise ContractViolation(
                "too_many_columns",
                f"predictions have {shape[1]} columns, over privacy.max_prediction_columns={max_prediction_columns}",
            )
        if n_rows < min_rows:
            raise ContractViolation("too_few_rows", f"predictions for {n_rows} rows, under min_rows={min_rows}")
        return
    if expected is None:
        raise ContractViolation(
            "tensor_names", "a train result is checked against its pinned starting weights; this task pinned none"
        )
    if set(described) != set(expected):
        extra, missing = sorted(set(described) - set(expected)), sorted(set(expected) - set(described))
        raise ContractViolation("tensor_names", f"unexpected {extra[:5]}, missing {missing[:5]}")
    for name, spec in described.items():
        if spec.shape != expected[name].shape:
            raise ContractViolation(
                "tensor_shape", f"{name} has shape {list(spec.shape)}, expected {list(expected[name].shape)}"
            )


def _decode(payload: bytes, described: dict[str, TensorSpec], wire: str) -> dict[str, np.ndarray]:
    """The payload's tensors as float32 arrays, each checked against the header's shape, ``wire`` and finite."""
    if not described:
        if payload:
            raise ContractViolation("bad_payload", f"{len(payload)} payload bytes but no tensors described")
        return {}
    table, data = _safetensors_table(payload)
    if set(table) != set(described):
        raise ContractViolation("bad_payload", "payload tensor names differ from the header's")
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, shape, begin, end) in table.items():
        if shape != described[name].shape:
            raise ContractViolation("bad_payload", f"{name} payload shape {list(shape)} differs from the header's")
        if dtype != wire:
            raise ContractViolation("bad_dtype", f"{name} has dtype {dtype[:16]}, only {wire} is accepted")
        array = _widened(data[begin:end], dtype).reshape(shape)
        if not np.isfinite(array).all():
            raise ContractViolation("non_finite", f"{name} holds NaN or infinite values")
        arrays[name] = array
    return arrays


def _safetensors_table(payload: bytes) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], memoryview]:
    """Name -> (dtype, shape, begin, end) of a safetensors blob, and its data; the offsets must tile the data
    exactly, each span holding its shape in its dtype (only the wire dtypes are known here)."""
    if len(payload) < 8:
        raise ContractViolation("bad_payload", "payload is not safetensors: shorter than its length prefix")
    (size,) = struct.unpack("<Q", payload[:8])
    if size > len(payload) - 8:
        raise ContractViolation("bad_payload", f"payload is not safetensors: header of {size} bytes exceeds it")
    try:
        header = json.loads(payload[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ContractViolation("bad_payload", "payload is not safetensors: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise ContractViolation("bad_payload", "payload is not safetensors: its header is not a JSON object")
    data = memoryview(payload)[8 + size :]
    table: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = str(info["dtype"]), tuple(int(d) for d in info["shape"]), info["data_offsets"]
            count = math.prod(shape)
            if dtype not in _ITEM_BYTES:
                raise ContractViolation("bad_dtype", f"{name} has dtype {dtype[:16]}, not a wire dtype")
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= len(data)) \
                    or end - begin != count * _ITEM_BYTES[dtype] or min(shape, default=0) < 0:
                raise ContractViolation("bad_payload", f"{name} offsets do not match its shape and dtype")
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractViolation("bad_payload", "payload is not safetensors: a malformed tensor entry") from exc
        table[name] = (dtype, shape, begin, end)
    position = 0
    for _, _, begin, end in sorted(table.values(), key=lambda entry: entry[2:]):
        if begin != position:
            raise ContractViolation("bad_payload", "payload is not safetensors: gaps or overlapping tensors")
        position = end
    if position != len(data):
        raise ContractViolation("bad_payload", "payload is not safetensors: trailing bytes after its tensors")
    return table, data


def _widened(raw: memoryview, dtype: str) -> np.ndarray:
    """Little-endian ``dtype`` values as float32 (exact for each of the wire dtypes)."""
    if dtype == "BF16":
        # bfloat16 is the top half of a float32.
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype="<f4" if dtype == "F32" else "<f2").astype(np.float32)
