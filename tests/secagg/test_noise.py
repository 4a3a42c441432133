"""The agent's Gaussian noise: really there, of the planned variance, on the clipped update, and sound with
the fixed-point range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pod_agent.errors import SecAggError
from pod_agent.secagg import encode_update
from pod_agent.secagg.noise import MAX_SHARE_CLIP_PROBABILITY, check_share_range, noise_update, share_clip_probability

RELEASES = 400
UPDATE = {"w": np.linspace(-1.0, 1.0, 2000, dtype=np.float32).reshape(40, 50), "b": np.full(3, 0.5, np.float32)}


def _releases(std: float, clip_norm: float) -> tuple[np.ndarray, float]:
    """RELEASES noised copies of UPDATE, flattened, and the clip's scale."""
    draws = []
    scale = 1.0
    for _ in range(RELEASES):
        noised = noise_update(UPDATE, clip_norm=clip_norm, std=std)
        scale = noised.scale
        draws.append(np.concatenate([noised.arrays[name].reshape(-1) for name in sorted(UPDATE)]))
    return np.stack(draws).astype(np.float64), scale


def _clean() -> np.ndarray:
    return np.concatenate([UPDATE[name].reshape(-1) for name in sorted(UPDATE)]).astype(np.float64)


def test_repeated_releases_of_one_update_carry_the_planned_variance_around_the_clipped_update() -> None:
    std = 0.3
    draws, scale = _releases(std, clip_norm=5.0)
    norm = float(np.linalg.norm(_clean()))
    assert scale == pytest.approx(5.0 / norm)
    residual = draws - _clean() * scale
    n = residual.size  # 801,200 samples: the variance estimate's relative sd is sqrt(2 / n) ~ 0.16 %
    assert residual.var() == pytest.approx(std**2, rel=6 * math.sqrt(2 / n))
    assert abs(residual.mean()) < 6 * std / math.sqrt(n)
    # Every value moved in every release: nothing passed through unnoised.
    assert np.count_nonzero(residual == 0) == 0
    # Each value's own sample variance over the releases is chi-square(RELEASES - 1) scaled: its mean is std**2.
    per_value = residual.var(axis=0, ddof=1)
    assert per_value.mean() == pytest.approx(std**2, rel=0.01)
    # Independent across values: neighbouring residuals are uncorrelated.
    assert abs(np.corrcoef(residual[:, :-1].reshape(-1), residual[:, 1:].reshape(-1))[0, 1]) < 0.01


def test_two_releases_draw_different_noise() -> None:
    first = noise_update(UPDATE, clip_norm=100.0, std=0.1).arrays["w"]
    second = noise_update(UPDATE, clip_norm=100.0, std=0.1).arrays["w"]
    assert not np.array_equal(first, second)
    assert first.dtype == np.float32 and first.shape == (40, 50)


def test_noise_without_a_positive_std_is_refused() -> None:
    with pytest.raises(SecAggError, match="must be finite and > 0"):
        noise_update(UPDATE, clip_norm=1.0, std=0.0)
    with pytest.raises(SecAggError, match="NaN or infinite"):
        noise_update({"w": np.array([np.nan], np.float32)}, clip_norm=1.0, std=1.0)


def test_a_noised_update_still_never_wraps_the_modulus() -> None:
    """Noise far beyond the per-value bound is clipped by the encoder, never wrapped."""
    from pod_agent.protocol.messages import SecAggParams

    params = SecAggParams(prime_q=2 * 2**16 * 2, precision=2**16, num_workers=2, modulus_bits=32, weighted=False)
    noised = noise_update(UPDATE, clip_norm=1.0, std=50.0)
    encoded = encode_update(noised.arrays, params=params, n_rows=1)
    assert encoded.n_clipped > 0
    signed = encoded.vector[: encoded.layout.n_values].astype(np.int64)
    signed[signed >= 2**31] -= 2**32
    assert np.abs(signed).max() <= 2**16  # the bound B = 1.0 times the precision


def test_split_noise_needs_room_under_the_per_value_bound() -> None:
    assert share_clip_probability(bound=1.0, clip_norm=1.0, share_std=0.1, n_values=10) == 1.0
    roomy = share_clip_probability(bound=12.0, clip_norm=1.0, share_std=1.0, n_values=10_000_000)
    assert roomy < MAX_SHARE_CLIP_PROBABILITY
    check_share_range(bound=12.0, clip_norm=1.0, share_std=1.0, n_values=10_000_000)
    with pytest.raises(SecAggError, match="raise prime_q"):
        check_share_range(bound=4.0, clip_norm=1.0, share_std=1.0, n_values=1000)
