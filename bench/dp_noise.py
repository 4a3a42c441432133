"""Benchmark: what the pod's differential-privacy noise adds to sending a 10M-value update.

A float32 update of 10M values (``bench.wire.update_of``) goes through the pod's secure path twice,
each the median of ``repeats`` runs: ``encode_update`` alone (finite check, L2 clip, per-value clip,
fixed point), and ``noise_update`` (L2 clip, then Gaussian noise from a fresh OS-seeded PCG64, chunk
by chunk in float64) followed by the same ``encode_update``. The overhead is the noise step over the
plain encode. Goal: the noise costs at most as much as the encode it precedes (overhead <= 1x), so
DP never dominates a pod's send. The noised values' sample standard deviation is reported beside the
planned one as a check that the noise is there.

    python -m bench.dp_noise [--small] [--json]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.cli import parser_for, show
from bench.timing import median_seconds
from bench.wire import update_of
from pod_agent.protocol.messages import SecAggParams
from pod_agent.secagg import encode_update
from pod_agent.secagg.noise import noise_update

FULL_VALUES = 10_000_000
SMALL_VALUES = 200_000
CLIP_NORM = 1.0
NOISE_STD = 2.0  # z = 1 at clip 1: std = z x 2C
# Three pods, a per-value bound of 16 (room for the noise), 64-bit modulus.
PARAMS = SecAggParams(
    prime_q=2 * 2**16 * 3 * 16, precision=2**16, num_workers=3, clip_norm=CLIP_NORM, weighted=False,
)


def run(small: bool) -> dict[str, Any]:
    n_values = SMALL_VALUES if small else FULL_VALUES
    repeats = 5 if small else 3
    arrays = update_of(n_values)
    encode_s, encode_cpu, _ = median_seconds(lambda: encode_update(arrays, params=PARAMS, n_rows=1), repeats)
    noise_s, noise_cpu, noised = median_seconds(
        lambda: noise_update(arrays, clip_norm=CLIP_NORM, std=NOISE_STD), repeats
    )
    unclipped = PARAMS.model_copy(update={"clip_norm": None})
    both_s, _, _ = median_seconds(lambda: encode_update(
        noise_update(arrays, clip_norm=CLIP_NORM, std=NOISE_STD).arrays, params=unclipped, n_rows=1), repeats)
    sample = np.concatenate([a.reshape(-1)[:100_000] for a in noised.arrays.values()]).astype(np.float64)
    overhead = noise_s / encode_s
    return {
        "values": n_values, "encode_s": encode_s, "encode_cpu_s": encode_cpu, "noise_s": noise_s,
        "noise_cpu_s": noise_cpu, "noise_then_encode_s": both_s, "overhead": overhead,
        "noise_std_planned": NOISE_STD, "noise_std_measured": float(sample.std()),
        "goal": "noise <= encode (overhead <= 1x)", "ok": overhead <= 1.0,
    }


def _print(result: dict[str, Any]) -> None:
    print(f"dp noise: {result['values']:,} float32 values")
    print(f"encode {result['encode_s']:.3f} s, noise {result['noise_s']:.3f} s (cpu {result['noise_cpu_s']:.3f} s), "
          f"noise then encode {result['noise_then_encode_s']:.3f} s: overhead {result['overhead']:.2f}x of the encode")
    print(f"noise std {result['noise_std_measured']:.4f} (planned {result['noise_std_planned']})")


def main() -> None:
    args = parser_for(__doc__, small_help="the smoke size CI runs").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
