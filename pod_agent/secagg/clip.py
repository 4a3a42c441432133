"""Parameter clipping before secure aggregation: per-value bound and whole-update L2 norm.

Owns the seeds' ``param_clipping = {prime_q Q, precision P, num_workers N}`` form and
its meaning: every value sent lies in [-B, B] with B = Q / (P * 2 * N), so that the
sum over N workers of round(value * P) stays inside (-Q/2, Q/2). Also owns L2-norm
clipping of a whole update (``clip_norm``, the usual step before DP noise).

A variance (a tensor whose name ends in ``running_var``) is never clipped below 0
when the pod sends weights; when it sends an update (new - old) a negative delta is
legitimate, and clipping a delta toward 0 can only raise old + delta, so the
variance the modeller applies stays >= 0 up to 1/precision of rounding.

Integer buffers (BatchNorm ``num_batches_tracked``) are refused here: they are not
averaged through secure aggregation; the caller drops them and the modeller keeps its
own counter. Fixed-point encoding is ``fixed_point.py``; the chunked, fused path that
``protect_update`` uses shares ``clip_chunk`` with :func:`clip_update`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from pod_agent.errors import SecAggError
from pod_agent.protocol import SecAggParams

Returns = Literal["update", "weights"]
FloatArray = npt.NDArray[np.floating]

# Values handled per step: big enough to amortise numpy call overhead, small enough
# that temporaries stay in L2 cache and peak memory stays near the update's own size.
CHUNK_VALUES = 1 << 16

_VARIANCE_SUFFIX = "running_var"


@dataclass(frozen=True)
class ClipBound:
    """The seeds' ``param_clipping`` triple; ``bound`` is B = Q / (P * 2 * N)."""

    prime_q: int
    precision: int
    num_workers: int

    def __post_init__(self) -> None:
        for field in ("prime_q", "precision", "num_workers"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SecAggError(
                    f"param_clipping.{field} = {value!r} is not a positive integer; "
                    "give prime_q, precision and num_workers as integers >= 1"
                )

    @classmethod
    def from_params(cls, params: SecAggParams) -> ClipBound:
        return cls(prime_q=params.prime_q, precision=params.precision, num_workers=params.num_workers)

    @classmethod
    def from_mapping(cls, param_clipping: Mapping[str, object]) -> ClipBound:
        """Accept the seeds' dict form ``{"prime_q": Q, "precision": P, "num_workers": N}``."""
        expected = {"prime_q", "precision", "num_workers"}
        if set(param_clipping) != expected:
            raise SecAggError(
                f"param_clipping keys {sorted(param_clipping)} must be exactly {sorted(expected)}"
            )
        values = {key: param_clipping[key] for key in expected}
        return cls(**values)  # type: ignore[arg-type]  # __post_init__ checks the types

    @classmethod
    def for_bound(cls, bound: float, *, precision: int, num_workers: int) -> ClipBound:
        """The triple whose bound is at least ``bound``: prime_q = ceil(2 * P * N * bound)."""
        if not bound > 0:
            raise SecAggError(f"clip bound {bound!r} must be > 0")
        return cls(prime_q=math.ceil(2 * precision * num_workers * bound), precision=precision,
                   num_workers=num_workers)

    @property
    def bound(self) -> float:
        return self.prime_q / (self.precision * 2 * self.num_workers)


@dataclass(frozen=True)
class ClippedUpdate:
    """Clipped copies of the arrays and how many values the bound changed."""

    arrays: dict[str, FloatArray]
    n_clipped: int


@dataclass(frozen=True)
class NormClip:
    """An update scaled to L2 norm <= clip_norm; ``scale`` is 1.0 when it already was."""

    arrays: dict[str, FloatArray]
    norm: float
    scale: float


def is_variance(name: str) -> bool:
    return name.endswith(_VARIANCE_SUFFIX)


def floating_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors that go through secure aggregation: the floating ones.

    Pod and modeller both call this (on the update and on the global weights) so that
    their layouts agree; integer buffers such as num_batches_tracked stay out.
    """
    return {name: array for name, array in arrays.items() if np.issubdtype(array.dtype, np.floating)}


def require_floating(arrays: Mapping[str, np.ndarray]) -> None:
    """Raise for any non-floating array: integer buffers are not securely aggregated."""
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise SecAggError(
                f"tensor {name!r} has dtype {array.dtype}: only floating tensors are securely "
                "aggregated; drop integer buffers such as num_batches_tracked before protect_update"
            )


def clip_range(bound: float, *, variance: bool, returns: Returns) -> tuple[float, float]:
    """The allowed [low, high] for one tensor: [-B, B], or [0, B] for a variance sent as weights."""
    return (0.0 if variance and returns == "weights" else -bound), bound


def clip_chunk(work: npt.NDArray[np.float64], *, low: float, high: float, clip_high: float | None = None) -> int:
    """Clip ``work`` in place; return how many values lay outside [low, high].

    ``clip_high`` (<= high) lets the encoder clip a hair below ``high`` without
    counting values between the two, which round to the same integer anyway.
    Raises for a non-finite value: NaN passes through np.clip and would turn into an
    arbitrary integer when encoded.
    """
    if work.size == 0:
        return 0
    # min and max propagate NaN and carry any infinity, so these two reductions both check
    # finiteness and show whether anything needs counting or clipping (usually nothing).
    smallest, largest = float(work.min()), float(work.max())
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        raise SecAggError(
            "update holds a NaN or infinite value (or one beyond float64 range once scaled by the "
            "precision); refusing to encode it"
        )
    n_clipped = 0
    if largest > high or smallest < low:
        n_clipped = int(np.count_nonzero(work > high)) + int(np.count_nonzero(work < low))
    top = high if clip_high is None else clip_high
    bottom = max(low, -top)
    if largest > top or smallest < bottom:
        np.clip(work, bottom, top, out=work)
    return n_clipped


def clip_update(
    arrays: Mapping[str, np.ndarray], bound: ClipBound, *, returns: Returns = "update"
) -> ClippedUpdate:
    """Clip every floating tensor to [-B, B] (a sent variance to [0, B]); count changed values."""
    require_floating(arrays)
    out: dict[str, FloatArray] = {}
    n_clipped = 0
    for name, array in arrays.items():
        work = np.array(array, dtype=np.float64)
        low, high = clip_range(bound.bound, variance=is_variance(name), returns=returns)
        n_clipped += clip_chunk(work, low=low, high=high)
        out[name] = work.astype(array.dtype)
    return ClippedUpdate(arrays=out, n_clipped=n_clipped)


def l2_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all values together, accumulated in float64 chunk by chunk."""
    total = 0.0
    for array in arrays.values():
        flat = array.reshape(-1)
        for start in range(0, flat.size, CHUNK_VALUES):
            chunk = flat[start : start + CHUNK_VALUES].astype(np.float64)
            # einsum's own loop, not np.dot: numpy's OpenBLAS runs a long dot on its thread pool, and in the
            # daemon (worker threads, child processes) that pool was seen to hang in exec_blas.
            total += float(np.einsum("i,i->", chunk, chunk))
    if not math.isfinite(total):
        raise SecAggError("update holds a NaN or infinite value; refusing to encode it")
    return math.sqrt(total)


def norm_scale(arrays: Mapping[str, np.ndarray], clip_norm: float) -> tuple[float, float]:
    """(norm, scale) with scale = min(1, clip_norm / norm)."""
    if not clip_norm > 0:
        raise SecAggError(f"clip_norm = {clip_norm!r} must be > 0")
    norm = l2_norm(arrays)
    return norm, (1.0 if norm <= clip_norm else clip_norm / norm)


def clip_l2(arrays: Mapping[str, np.ndarray], clip_norm: float) -> NormClip:
    """Scale the whole update so its L2 norm is at most ``clip_norm``."""
    require_floating(arrays)
    norm, scale = norm_scale(arrays, clip_norm)
    out = {
        name: (array * scale).astype(array.dtype) if scale != 1.0 else array.copy()
        for name, array in arrays.items()
    }
    return NormClip(arrays=out, norm=norm, scale=scale)
