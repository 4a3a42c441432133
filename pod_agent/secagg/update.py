"""The pod's side before masking: turn a checked update into one fixed-point vector.

Owns the vector's ``Layout`` (tensors in sorted name order, flattened; then two slots
per train metric; then one row-count slot) and ``encode_update``, which runs, chunk by
chunk so that peak memory stays near the vector's own size: finite check, optional
L2-norm scale (clip_norm), per-value clip to B, weighting by the pod's training rows,
fixed-point encoding; then writes the metric and row-count slots. The modeller derives
the same Layout from the global weights and the task's metric names.

Metrics ride inside the masked vector so that, under secure aggregation, the modeller
learns train metrics and row counts only as cohort aggregates. Metric m takes two
slots: n_rows * round(clip(value) * S) and n_rows (0 and 0 when the pod has no finite
value for m), so the cohort's row-weighted mean is the first sum over S times the
second; the scale S and the no-wrap argument are ``fixed_point.plan_metrics``.

Masking is ``plus.mask_input`` (SecAgg+); summing and decoding are ``aggregate.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pod_agent.errors import SecAggError
from pod_agent.protocol import SecAggParams
from pod_agent.secagg.clip import (
    CHUNK_VALUES,
    ClipBound,
    Returns,
    clip_chunk,
    clip_range,
    is_variance,
    norm_scale,
    require_floating,
)
from pod_agent.secagg.fixed_point import METRIC_BOUND, modulus_dtype, plan_encoding, plan_metrics


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    """Where each tensor and metric lives in the vector; the last element holds the pod's row count."""

    tensors: tuple[TensorSlot, ...]
    metrics: tuple[str, ...] = ()

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], metrics: Sequence[str] = ()) -> Layout:
        """Layout of floating tensors and metric names, each in sorted order (the modeller passes its global
        weights and the task's metric names)."""
        require_floating(arrays)
        names = sorted(metrics)
        if len(set(names)) != len(names):
            raise SecAggError(f"metric names {names} repeat a name; list each metric once")
        slots = []
        offset = 0
        for name in sorted(arrays):
            array = arrays[name]
            slots.append(TensorSlot(name, tuple(array.shape), array.dtype.name, offset, int(array.size)))
            offset += int(array.size)
        return cls(tuple(slots), tuple(names))

    @property
    def n_values(self) -> int:
        return sum(slot.size for slot in self.tensors)

    @property
    def size(self) -> int:
        """Elements in the vector: every value, two slots per metric, the row-count slot."""
        return self.n_values + 2 * len(self.metrics) + 1

    def metric_slots(self, name: str) -> tuple[int, int]:
        """(rows x value slot, rows slot) of metric ``name``."""
        first = self.n_values + 2 * self.metrics.index(name)
        return first, first + 1

    @property
    def row_slot(self) -> int:
        return self.size - 1


@dataclass(frozen=True)
class EncodedUpdate:
    """The unmasked fixed-point vector of one pod, ready for ``plus.mask_input``."""

    vector: npt.NDArray[np.unsignedinteger]
    layout: Layout
    n_clipped: int
    norm_scale: float  # the L2 clip's factor; 1.0 without clip_norm or when the norm was within it
    metrics_clipped: tuple[str, ...] = ()  # metrics whose value lay beyond +-METRIC_BOUND


def encode_update(
    arrays: Mapping[str, np.ndarray],
    *,
    params: SecAggParams,
    n_rows: int,
    returns: Returns = "update",
    metrics: Mapping[str, float] | None = None,
    metric_names: Sequence[str] = (),
) -> EncodedUpdate:
    """Clip, weight and encode an update (and the metrics named in ``metric_names``) for ``params``.

    Checks, cheapest first: tensors floating, no duplicate metric name, rows >= 1, row
    count cannot wrap its slot, the encoding fits the modulus, the metrics fit it, values
    finite. ``returns`` says whether the tensors are an update (new - old) or weights;
    only weights clip a variance at 0. ``metrics`` are the pod's train metrics; a name in
    ``metric_names`` that the pod lacks (or whose value is NaN) is sent as absent, a name
    not in ``metric_names`` is not sent.
    """
    layout = Layout.from_arrays(arrays, metric_names)
    if layout.n_values == 0:
        raise SecAggError("the update holds no values; nothing to aggregate")
    if n_rows < 1:
        raise SecAggError(f"n_rows = {n_rows}: a pod with no training rows has no update to aggregate")
    if 2 * params.num_workers * n_rows >= 1 << params.modulus_bits:
        raise SecAggError(
            f"n_rows = {n_rows} times num_workers = {params.num_workers} could wrap the row-count slot "
            f"mod 2**{params.modulus_bits}; use modulus_bits=64"
        )
    bound = ClipBound.from_params(params)
    encoding = plan_encoding(bound, modulus_bits=params.modulus_bits, weight=n_rows if params.weighted else 1)
    vector = np.empty(layout.size, dtype=modulus_dtype(params.modulus_bits))
    metrics_clipped = _encode_metrics(vector, layout=layout, params=params, n_rows=n_rows, metrics=metrics or {})
    scale = 1.0
    if params.clip_norm is not None:
        _, scale = norm_scale(arrays, params.clip_norm)

    chunk_values = min(CHUNK_VALUES, layout.n_values)
    work = np.empty(chunk_values, dtype=np.float64)
    # One multiply applies the L2 scale and the fixed-point scale; the clip range scales with it.
    factor = scale * encoding.scale
    n_clipped = 0
    for slot in layout.tensors:
        low, high = clip_range(bound.bound, variance=is_variance(slot.name), returns=returns)
        low, high = low * encoding.scale, high * encoding.scale
        flat = np.asarray(arrays[slot.name]).reshape(-1)
        for start in range(0, slot.size, chunk_values):
            chunk = flat[start : start + chunk_values]
            w = work[: chunk.size]
            # Widen, then scale in place: faster than a multiply that casts as it goes.
            np.copyto(w, chunk)
            np.multiply(w, factor, out=w)
            n_clipped += clip_chunk(w, low=low, high=high, clip_high=min(high, encoding.limit_float))
            encoding.round_into(w, vector[slot.offset + start : slot.offset + start + chunk.size])
    vector[layout.row_slot] = n_rows
    return EncodedUpdate(vector=vector, layout=layout, n_clipped=n_clipped, norm_scale=scale,
                         metrics_clipped=metrics_clipped)


def _encode_metrics(
    vector: npt.NDArray[np.unsignedinteger],
    *,
    layout: Layout,
    params: SecAggParams,
    n_rows: int,
    metrics: Mapping[str, float],
) -> tuple[str, ...]:
    """Write the metric slots; return the names whose values were clipped to +-METRIC_BOUND."""
    if not layout.metrics:
        return ()
    plan = plan_metrics(ClipBound.from_params(params), modulus_bits=params.modulus_bits, weighted=params.weighted)
    plan.check_rows(n_rows)
    modulus = 1 << params.modulus_bits
    clipped = []
    for name in layout.metrics:
        value_slot, rows_slot = layout.metric_slots(name)
        value = metrics.get(name)
        if value is None or math.isnan(value):
            vector[value_slot] = vector[rows_slot] = 0
            continue
        if abs(value) > METRIC_BOUND:
            clipped.append(name)
            value = math.copysign(METRIC_BOUND, value)
        # Python integers: exact, and reduced mod M only once (|n_rows * level| < M/2 by plan_metrics).
        vector[value_slot] = (n_rows * round(value * plan.scale)) % modulus
        vector[rows_slot] = n_rows
    return tuple(clipped)


def vector_to_bytes(vector: npt.NDArray[np.unsignedinteger]) -> memoryview:
    """Little-endian bytes of a masked vector (BlobRef encoding secagg-u32 / secagg-u64), read-only.

    A view of the vector itself where it is already little-endian (always, on x86 and ARM): the
    80 MB of a 10M-value 64-bit vector are hashed and written without a copy first.
    """
    little = np.ascontiguousarray(vector.astype(vector.dtype.newbyteorder("<"), copy=False))
    return little.data.toreadonly().cast("B")


def vector_from_bytes(data: bytes, *, layout: Layout, params: SecAggParams) -> npt.NDArray[np.unsignedinteger]:
    """Read a masked vector back, refusing a length that does not match the layout."""
    dtype = modulus_dtype(params.modulus_bits)
    expected = layout.size * dtype.itemsize
    if len(data) != expected:
        raise SecAggError(
            f"masked vector is {len(data)} bytes; the layout needs {layout.size} x {dtype.itemsize} = {expected}"
        )
    return np.frombuffer(data, dtype=dtype)
