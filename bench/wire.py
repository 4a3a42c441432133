"""Benchmark: a 10M-parameter update on the wire, safetensors bytes vs JSON lists of floats.

Encode (arrays -> bytes) plus decode (bytes -> arrays) of the same float32 update, as
safetensors (what pods send without secure aggregation) and as JSON lists of floats (what
a naive JSON API would send); also the secure-aggregation vector's raw little-endian bytes
(secagg-u32). Both round trips are checked for exactness. Time is the median (wall, CPU)
of a few runs; JSON runs once at full size because it takes seconds.

    python -m bench.wire [--small] [--json]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from bench.cli import parser_for, show
from bench.timing import median_seconds
from pod_agent.protocol.messages import SecAggParams
from pod_agent.secagg import Layout, vector_from_bytes, vector_to_bytes

FULL_VALUES = 10_000_000
SMALL_VALUES = 200_000


def update_of(n_values: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A float32 update of exactly n_values: three square-ish weight matrices and a bias."""
    rng = np.random.default_rng(seed)
    side = max(1, int((n_values // 4) ** 0.5))
    shapes: dict[str, tuple[int, ...]] = {f"layer{i}.weight": (side, side) for i in range(3)}
    shapes["head.bias"] = (n_values - 3 * side * side,)
    return {name: rng.standard_normal(shape, dtype=np.float32) * 0.01 for name, shape in shapes.items()}


def _round_trip(encode: Callable[[], bytes | memoryview], decode: Callable[[Any], Any], repeats: int) -> dict[str, Any]:
    enc_s, enc_cpu, blob = median_seconds(encode, repeats)
    dec_s, dec_cpu, decoded = median_seconds(lambda: decode(blob), repeats)
    return {"bytes": len(blob), "encode_s": enc_s, "decode_s": dec_s, "total_s": enc_s + dec_s,
            "total_cpu_s": enc_cpu + dec_cpu, "decoded": decoded}


def run(small: bool) -> dict[str, Any]:
    n_values = SMALL_VALUES if small else FULL_VALUES
    arrays = update_of(n_values)
    fast_repeats, json_repeats = 5, (3 if small else 1)

    safetensors = _round_trip(lambda: st_save(arrays), st_load, fast_repeats)
    as_json = _round_trip(
        lambda: json.dumps({name: array.tolist() for name, array in arrays.items()}).encode(),
        lambda blob: {name: np.asarray(values, dtype=np.float32) for name, values in json.loads(blob).items()},
        json_repeats,
    )
    layout = Layout.from_arrays(arrays)
    params = SecAggParams(prime_q=2**31, precision=2**16, num_workers=2, modulus_bits=32)
    vector = np.random.default_rng(1).integers(0, 2**32, size=layout.size, dtype=np.uint32)
    secagg = _round_trip(lambda: vector_to_bytes(vector),
                         lambda blob: vector_from_bytes(blob, layout=layout, params=params), fast_repeats)

    for name, array in arrays.items():
        np.testing.assert_array_equal(safetensors["decoded"][name], array)
        np.testing.assert_array_equal(as_json["decoded"][name], array)
    np.testing.assert_array_equal(secagg["decoded"], vector)
    result: dict[str, Any] = {"values": n_values}
    for label, measured in (("safetensors", safetensors), ("json", as_json), ("secagg_u32", secagg)):
        result[label] = {key: value for key, value in measured.items() if key != "decoded"}
    result["speedup"] = as_json["total_s"] / safetensors["total_s"]
    result["speedup_cpu"] = as_json["total_cpu_s"] / safetensors["total_cpu_s"]
    result["size_ratio"] = as_json["bytes"] / safetensors["bytes"]
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"wire: {result['values']:,} float32 values, encode + decode")
    print(f"{'':12} {'MiB':>9} {'encode s':>9} {'decode s':>9} {'total s':>9} {'cpu s':>9}")
    for label in ("safetensors", "json", "secagg_u32"):
        r = result[label]
        print(f"{label:12} {r['bytes'] / 2**20:9.1f} {r['encode_s']:9.3f} {r['decode_s']:9.3f} "
              f"{r['total_s']:9.3f} {r['total_cpu_s']:9.3f}")
    print(f"safetensors vs json: {result['speedup']:.0f}x faster (cpu {result['speedup_cpu']:.0f}x), "
          f"{result['size_ratio']:.1f}x smaller")


def main() -> None:
    args = parser_for(__doc__, small_help="the smoke size CI runs").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
