"""Fixed-point encoding mod M = 2**modulus_bits, and decoding of the sum.

Owns the check that the sum cannot wrap. A value v (already clipped to [-B, B]) is sent
as round(v * P * w) mod M, where w is the pod's weight (its training rows in weighted
mode, else 1). The check is per pod, so a pod decides alone and still guarantees the
cohort's sum:

    each pod's |encoded| <= limit(w) = floor(w * Q / (2 N) + 1/2)   (= round(w * B * P))
    and N * limit(w) < M / 2,     with at most N participants,

hence |sum| < M / 2 and the centered lift of the sum mod M is the true sum. With w = 1
this is the seeds' N * B * P < M / 2. In weighted mode the modulus headroom above Q
pays for the weights: a pod with n_rows training rows needs
n_rows * Q / 2 < M / 2, roughly n_rows < M / Q (64-bit M with Q = 2**40 leaves room
for 2**24 rows a pod); otherwise the pod refuses with the numbers and the fix.

Encoding is exact while |v * P * w| < 2**53 (float64); beyond that its relative error
is 2**-53.

Train metrics (``plan_metrics``) get the same guarantee with their own scale S, a power
of two every party derives from the task's parameters. A metric value v is clipped to
[-V, V] with V = METRIC_BOUND = 2**16 and sent as n_rows * round(v * S); the pod's rows
are capped at R = min(MAX_METRIC_ROWS, max_weight) in weighted mode (plan_encoding
already refuses more) and R = MAX_METRIC_ROWS = 2**28 otherwise. V * S is an integer, so
|round(v * S)| <= V * S and each pod's slot is at most R * V * S in size; S is the
largest power of two with

    N * R * V * S <= M/2 - 1,

so the sum of at most N pods cannot wrap, nor can its row-count companion (N * R).
With M = 2**64 that gives S = 2**19 / N unweighted (2**9 at N = 1000: the mean is exact
to 1/1024), more when Q is large and weighting caps R lower. A scale under
MIN_METRIC_SCALE = 2**8 is refused with the numbers (32-bit moduli cannot carry
metrics), and so is a pod with more than R rows.

Masks are ``masks.py``; the layout of the vector is ``update.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pod_agent.errors import SecAggError
from pod_agent.secagg.clip import ClipBound

_DTYPES: dict[int, np.dtype[np.unsignedinteger]] = {32: np.dtype("<u4"), 64: np.dtype("<u8")}
_SIGNED: dict[int, np.dtype[np.signedinteger]] = {32: np.dtype("<i4"), 64: np.dtype("<i8")}

# Train metrics (losses, accuracies, errors of standardised targets) lie far inside this;
# one beyond it is clipped and named in EncodedUpdate.metrics_clipped.
METRIC_BOUND = 1 << 16
# Rows one pod may weight its metrics by when weighting does not already cap them lower.
MAX_METRIC_ROWS = 1 << 28
# The coarsest metric resolution accepted: 1/256.
MIN_METRIC_SCALE = 1 << 8

# A double x with |x| <= 2**51, plus 1.5 * 2**52, is rounded to the nearest integer (ties to even,
# as np.rint) and that integer sits in the sum's bits offset by the constant's: one float add and
# one integer subtract, cheaper than numpy's float -> int64 cast (not than its cast to int32).
_ROUNDING_MAGIC = 1.5 * 2**52
_MAGIC_BITS = int(np.array(_ROUNDING_MAGIC).view(np.int64))
_MAGIC_EXACT_UP_TO = 2.0**51


def modulus_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    if modulus_bits not in _DTYPES:
        raise SecAggError(f"modulus_bits = {modulus_bits!r} is not supported; use 32 or 64")
    return _DTYPES[modulus_bits]


def signed_view(total: npt.NDArray[np.unsignedinteger], modulus_bits: int) -> npt.NDArray[np.signedinteger]:
    """Centered lift of values mod M: [M/2, M) maps to [-M/2, 0), by reinterpreting the bits."""
    return total.view(_SIGNED[modulus_bits])


@dataclass(frozen=True)
class Encoding:
    """How one pod encodes: multiply by ``scale``, clip within ``limit``, round, reduce mod M."""

    modulus_bits: int
    scale: float
    limit: int

    @property
    def limit_float(self) -> float:
        """The largest float <= limit: clipping to it keeps the no-wrap proof exact despite float rounding."""
        return _float_at_most(self.limit)

    def round_into(self, work: npt.NDArray[np.float64], out: npt.NDArray[np.unsignedinteger]) -> None:
        """Round scaled values that already lie within +-limit_float into ``out`` (mod M).

        Within the limit a value fits the signed integer of the modulus' width (2 N limit
        < M), whose two's-complement bits are the value mod M, so rounding writes straight
        into a signed view of ``out``. ``work`` is overwritten.
        """
        signed = out.view(_SIGNED[self.modulus_bits])
        if self.modulus_bits == 64 and self.limit_float <= _MAGIC_EXACT_UP_TO:
            np.add(work, _ROUNDING_MAGIC, out=work)
            np.subtract(work.view(np.int64), _MAGIC_BITS, out=signed, casting="unsafe")
        else:
            np.rint(work, out=signed, casting="unsafe")


def _float_at_most(value: int) -> float:
    as_float = float(value)
    return as_float if int(as_float) <= value else float(np.nextafter(as_float, 0.0))


def max_weight(bound: ClipBound, *, modulus_bits: int) -> int:
    """The most training rows a pod may weight by before the sum could wrap (0: not even 1)."""
    n, modulus = bound.num_workers, 1 << modulus_bits
    # limit(w) = (w Q + N) // 2N must stay <= (M - 1) // 2N
    largest_limit = (modulus - 1) // (2 * n)
    return (2 * n * (largest_limit + 1) - n - 1) // bound.prime_q


def plan_encoding(bound: ClipBound, *, modulus_bits: int, weight: int) -> Encoding:
    """The encoding for a pod of this weight, or SecAggError when the sum could wrap."""
    modulus_dtype(modulus_bits)
    if weight < 1:
        raise SecAggError(f"weight (training rows) = {weight} must be >= 1 to take part in the sum")
    q, p, n = bound.prime_q, bound.precision, bound.num_workers
    modulus = 1 << modulus_bits
    limit = (weight * q + n) // (2 * n)
    if 2 * n * limit >= modulus:
        weighted_hint = (
            f", or set weighted=false (weighting by n_rows={weight} multiplies the sum; at most "
            f"{max_weight(bound, modulus_bits=modulus_bits)} rows fit)"
            if weight > 1
            else ""
        )
        raise SecAggError(
            f"secure aggregation sum could wrap: num_workers * bound * precision * weight = "
            f"{n} * {bound.bound:.6g} * {p} * {weight} ~ {n * limit} must be < M/2 = 2**{modulus_bits}/2 = "
            f"{modulus // 2}; lower prime_q or precision"
            + ("" if modulus_bits == 64 else ", use modulus_bits=64")
            + weighted_hint
        )
    return Encoding(modulus_bits=modulus_bits, scale=float(p) * weight, limit=limit)


def decode_sum(
    total: npt.NDArray[np.unsignedinteger], *, divisor: float, modulus_bits: int, out: npt.NDArray[np.floating]
) -> None:
    """Write centered-lift(total) / divisor into ``out`` (any float dtype), without a float64 copy."""
    np.multiply(signed_view(total, modulus_bits), 1.0 / divisor, out=out, casting="unsafe")


@dataclass(frozen=True)
class MetricPlan:
    """Metric scale S of a round and the most rows a pod may weight its metrics by."""

    scale: int
    max_rows: int

    def check_rows(self, n_rows: int) -> None:
        if n_rows > self.max_rows:
            raise SecAggError(
                f"n_rows = {n_rows} exceeds the {self.max_rows} rows a pod may weight its train metrics by in "
                "this round; send the update without metrics, or lower prime_q"
            )


def plan_metrics(bound: ClipBound, *, modulus_bits: int, weighted: bool) -> MetricPlan:
    """The round's metric scale (see the module docstring), or SecAggError when metrics cannot fit."""
    modulus_dtype(modulus_bits)
    rows = min(MAX_METRIC_ROWS, max_weight(bound, modulus_bits=modulus_bits)) if weighted else MAX_METRIC_ROWS
    rows = max(rows, 1)
    n = bound.num_workers
    largest = ((1 << modulus_bits) // 2 - 1) // (n * rows * METRIC_BOUND)
    if largest < MIN_METRIC_SCALE:
        raise SecAggError(
            f"train metrics cannot be aggregated without wrapping: num_workers * rows * metric bound * scale = "
            f"{n} * {rows} * {METRIC_BOUND} * {MIN_METRIC_SCALE} must be < M/2 = 2**{modulus_bits}/2"
            + ("; use modulus_bits=64" if modulus_bits != 64 else "; lower num_workers or send no metrics")
        )
    return MetricPlan(scale=1 << (largest.bit_length() - 1), max_rows=rows)
