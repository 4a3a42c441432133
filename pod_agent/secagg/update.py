"""The pod's side: turn a checked update into one masked fixed-point vector.

Owns the vector's ``Layout`` (tensors in sorted name order, flattened, then one
row-count slot) and ``protect_update``, which runs, chunk by chunk so that peak memory
stays near the vector's own size: finite check, optional L2-norm scale (clip_norm),
per-value clip to B, weighting by the pod's training rows, fixed-point encoding, and
finally the pairwise masks. The modeller derives the same Layout from the global
weights. Summing and decoding are ``aggregate.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pod_agent.errors import SecAggError
from pod_agent.protocol.messages import SecAggParams
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
from pod_agent.secagg.fixed_point import modulus_dtype, plan_encoding
from pod_agent.secagg.masks import Cohort, RoundKeyPair, add_pairwise_masks


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    """Where each tensor lives in the vector; the last element holds the pod's row count."""

    tensors: tuple[TensorSlot, ...]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Layout:
        """Layout of floating tensors in sorted name order (the modeller passes its global weights)."""
        require_floating(arrays)
        slots = []
        offset = 0
        for name in sorted(arrays):
            array = arrays[name]
            slots.append(TensorSlot(name, tuple(array.shape), array.dtype.name, offset, int(array.size)))
            offset += int(array.size)
        return cls(tuple(slots))

    @property
    def n_values(self) -> int:
        return sum(slot.size for slot in self.tensors)

    @property
    def size(self) -> int:
        """Elements in the vector: every value plus the row-count slot."""
        return self.n_values + 1

    @property
    def row_slot(self) -> int:
        return self.n_values


@dataclass(frozen=True)
class ProtectedUpdate:
    vector: npt.NDArray[np.unsignedinteger]
    layout: Layout
    n_clipped: int
    norm_scale: float  # the L2 clip's factor; 1.0 without clip_norm or when the norm was within it


def protect_update(
    arrays: Mapping[str, np.ndarray],
    *,
    params: SecAggParams,
    task_id: str,
    me: str,
    my_round_key: RoundKeyPair,
    n_rows: int,
    returns: Returns = "update",
) -> ProtectedUpdate:
    """Clip, weight, encode and mask an update for the round described by ``params``.

    Checks, cheapest first: tensors floating, participants (me listed with my round
    key, no duplicates, at least 2, at most num_workers), encoding fits the modulus,
    values finite. ``returns`` says whether the tensors are an update (new - old) or
    weights; only weights clip a variance at 0.

    Call it once per task and round: two different updates masked with the same round
    keys, task id, round and cohort would reveal their difference to the aggregator.
    """
    layout = Layout.from_arrays(arrays)
    if layout.n_values == 0:
        raise SecAggError("the update holds no values; nothing to aggregate")
    cohort = Cohort.of(params.participants)
    cohort.member(me)
    if len(cohort.participants) < 2:
        raise SecAggError(
            "a secure-aggregation round needs at least 2 participants; one would send its update in clear"
        )
    if len(cohort.participants) > params.num_workers:
        raise SecAggError(
            f"{len(cohort.participants)} participants exceed param_clipping num_workers = {params.num_workers}: "
            "the clip bound would not keep their sum from wrapping; raise num_workers in the task"
        )
    if n_rows < 1:
        raise SecAggError(f"n_rows = {n_rows}: a pod with no training rows has no update to aggregate")
    if 2 * params.num_workers * n_rows >= 1 << params.modulus_bits:
        raise SecAggError(
            f"n_rows = {n_rows} times num_workers = {params.num_workers} could wrap the row-count slot "
            f"mod 2**{params.modulus_bits}; use modulus_bits=64"
        )
    bound = ClipBound.from_params(params)
    encoding = plan_encoding(bound, modulus_bits=params.modulus_bits, weight=n_rows if params.weighted else 1)
    scale = 1.0
    if params.clip_norm is not None:
        _, scale = norm_scale(arrays, params.clip_norm)

    vector = np.empty(layout.size, dtype=modulus_dtype(params.modulus_bits))
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
            np.multiply(chunk, factor, out=w, dtype=np.float64)
            n_clipped += clip_chunk(w, low=low, high=high, clip_high=min(high, encoding.limit_float))
            encoding.round_into(w, vector[slot.offset + start : slot.offset + start + chunk.size])
    vector[layout.row_slot] = n_rows
    add_pairwise_masks(
        vector, me=me, my_round_key=my_round_key, participants=params.participants, task_id=task_id,
        round_index=params.round,
    )
    return ProtectedUpdate(vector=vector, layout=layout, n_clipped=n_clipped, norm_scale=scale)


def vector_to_bytes(vector: npt.NDArray[np.unsignedinteger]) -> bytes:
    """Little-endian bytes of a masked vector (BlobRef encoding secagg-u32 / secagg-u64)."""
    return vector.astype(vector.dtype.newbyteorder("<"), copy=False).tobytes()


def vector_from_bytes(data: bytes, *, layout: Layout, params: SecAggParams) -> npt.NDArray[np.unsignedinteger]:
    """Read a masked vector back, refusing a length that does not match the layout."""
    dtype = modulus_dtype(params.modulus_bits)
    expected = layout.size * dtype.itemsize
    if len(data) != expected:
        raise SecAggError(
            f"masked vector is {len(data)} bytes; the layout needs {layout.size} x {dtype.itemsize} = {expected}"
        )
    return np.frombuffer(data, dtype=dtype)
