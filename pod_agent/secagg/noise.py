"""Gaussian noise the agent adds to a checked update, outside the sandbox, before fixed-point encoding.

Owns ``noise_update``: scale the whole update to L2 norm at most C, then add independent Gaussian noise
of a given standard deviation to every value, chunk by chunk in float64 (peak memory stays near the
update's own size). How much noise, and why, is ``pod_agent.policy.budget``; the pipeline calls this on
the arrays ``training.contract`` accepted, so nothing inside the sandbox can skip or shape it.

The noise comes from numpy's PCG64 seeded with 256 bits from the OS for every call: no seed a task
could name or predict. Floating-point Gaussian samples are not exactly Gaussian (their low bits carry
structure); the values are then rounded to the fixed-point grid of the encoding, which coarsens them
further, but the README lists this among the limits.

Fixed-point range. Noise enlarges values, and the encoder clips each value to the per-value bound B
before encoding, so the sum can never wrap the modulus whatever the noise drew (``clip.py``). When
this pod adds all the noise itself, that clip is post-processing of a private value and costs no
privacy. When the variance is split over several pods, each pod's share is clipped separately, so the
sum is the Gaussian mechanism only if no share was clipped: ``check_share_range`` refuses a round
where that could happen with probability over ``MAX_SHARE_CLIP_PROBABILITY`` (a union bound over the
values, from public numbers only: B, C, the share's std and the value count).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pod_agent.errors import SecAggError
from pod_agent.secagg.clip import CHUNK_VALUES, FloatArray, norm_scale, require_floating

# Chance that any value of a split-noise share lies beyond the per-value bound: far under any delta an
# owner would configure, though not added to the ledger's delta (a limit the README states).
MAX_SHARE_CLIP_PROBABILITY = 1e-9
_SEED_BITS = 256


@dataclass(frozen=True)
class NoisedUpdate:
    """The update clipped to L2 norm C plus Gaussian noise; ``norm`` and ``scale`` stay in the local log."""

    arrays: dict[str, FloatArray]
    norm: float
    scale: float
    std: float
    n_values: int


def noise_update(arrays: Mapping[str, np.ndarray], *, clip_norm: float, std: float) -> NoisedUpdate:
    """Scale the update to L2 norm <= ``clip_norm`` and add N(0, std**2) to each value.

    Checks, cheapest first: std finite and > 0, tensors floating, values finite (``norm_scale``).
    Each tensor keeps its dtype (float32 rounding of a noised value is post-processing).
    """
    if not (math.isfinite(std) and std > 0):
        raise SecAggError(f"noise std = {std!r} must be finite and > 0; the privacy budget sets it")
    require_floating(arrays)
    norm, scale = norm_scale(arrays, clip_norm)
    rng = np.random.Generator(np.random.PCG64(secrets.randbits(_SEED_BITS)))
    out: dict[str, FloatArray] = {}
    work = np.empty(CHUNK_VALUES, dtype=np.float64)
    n_values = 0
    for name, array in arrays.items():
        flat = np.asarray(array).reshape(-1)
        noised = np.empty(flat.size, dtype=array.dtype)
        for start in range(0, flat.size, CHUNK_VALUES):
            chunk = flat[start : start + CHUNK_VALUES]
            w = work[: chunk.size]
            rng.standard_normal(out=w)
            w *= std
            w += chunk * scale
            noised[start : start + chunk.size] = w
        out[name] = noised.reshape(array.shape)
        n_values += flat.size
    return NoisedUpdate(arrays=out, norm=norm, scale=scale, std=std, n_values=n_values)


def share_clip_probability(*, bound: float, clip_norm: float, share_std: float, n_values: int) -> float:
    """Upper bound on the chance that any of ``n_values`` clipped values plus its noise leaves [-B, B].

    A value of an update with L2 norm <= C lies in [-C, C], so it is clipped only if its noise passes
    B - C; by the union bound the chance is at most n * P(|N(0, s^2)| > B - C) = n * erfc((B - C) / (s sqrt 2)).
    """
    margin = bound - clip_norm
    if margin <= 0:
        return 1.0
    return min(1.0, n_values * math.erfc(margin / (share_std * math.sqrt(2))))


def check_share_range(*, bound: float, clip_norm: float, share_std: float, n_values: int) -> None:
    """Raise SecAggError when a split-noise share could be clipped by the encoding (see the docstring)."""
    chance = share_clip_probability(bound=bound, clip_norm=clip_norm, share_std=share_std, n_values=n_values)
    if chance > MAX_SHARE_CLIP_PROBABILITY:
        raise SecAggError(
            f"the per-value bound {bound:g} leaves too little room for this pod's noise share (std {share_std:.3g}, "
            f"clip norm {clip_norm:g}, {n_values} values): a share would be clipped with chance {chance:.2g}, and "
            "the sum would then carry less noise than accounted; the modeller should raise prime_q (a larger "
            "bound, under the owner's max_clip_bound), or the owner lower privacy.dp.honest_pods"
        )
