"""Benchmark: secure-aggregation math of one pod and of the modeller, next to Flower's SecAgg+.

Pod side: clip + weight + encode + pairwise-mask a 10M float32 update with 10 peers
(``protect_update``, key agreement included). Modeller side: from the 11 received masked
vectors' wire bytes, sum mod M, decode and average (``aggregate_masked``); for Flower the
same from its wire bytes (int64 .npy arrays). Flower's SecAgg+ client math on the same
arrays (quantize, 10 pairwise masks from its PRG, mod; and its server's sum + dequantize)
runs in a subprocess with the Python of a separate venv that has ``flwr`` installed
(``FLWR_PYTHON``, default /tmp/flwr-venv/bin/python); without it that half is skipped with a
note. Flower's private self-mask is left out on purpose: we do the same work on both sides.
Time is the median of ``repeats`` runs; peak memory is tracemalloc's peak of new allocations
(numpy buffers are traced) in a separate run, against the update's own size.

    python -m bench.secagg [--small] [--json]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench.cli import parser_for, show
from pod_agent.protocol.messages import Participant, SecAggParams
from pod_agent.secagg import (
    Layout,
    RoundKeyPair,
    aggregate_masked,
    protect_update,
    vector_from_bytes,
    vector_to_bytes,
)

PEERS = 10
FULL_VALUES = 10_000_000
SMALL_VALUES = 200_000
FLWR_PYTHON = Path(os.environ.get("FLWR_PYTHON", "/tmp/flwr-venv/bin/python"))
# Flower's defaults: values clipped to +-8, 2**22 quantization levels, modulus 2**32.
FLOWER_CLIP, FLOWER_LEVELS, FLOWER_MODULUS = 8.0, 2**22, 2**32


def update_of(n_values: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A float32 update of exactly n_values in a few layer-like tensors."""
    rng = np.random.default_rng(seed)
    big = max(1, n_values // 4)
    rows = max(1, int(big**0.5))
    shapes: dict[str, tuple[int, ...]] = {}
    left = n_values
    for index in range(3):
        cols = max(1, min(big, left) // rows)
        if rows * cols > left - 1:
            break
        shapes[f"layer{index}.weight"] = (rows, cols)
        left -= rows * cols
    shapes["head.bias"] = (left,)
    return {name: (rng.standard_normal(shape, dtype=np.float32) * 0.01) for name, shape in shapes.items()}


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds: CPU time is steadier on a shared, loaded host."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls), statistics.median(cpus)


def _peak_mb(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def _ours(arrays: dict[str, np.ndarray], *, modulus_bits: Literal[32, 64], repeats: int) -> dict[str, Any]:
    names = [f"pod-{i:02d}" for i in range(PEERS + 1)]
    keys = {name: RoundKeyPair.generate() for name in names}
    participants = [Participant(pod=n, key_id="0" * 64, round_public_key=keys[n].public_b64) for n in names]
    # The clip bound matches Flower's +-8: B = Q / (2 P N) with P = 2**16, N = 11 pods.
    precision = 2**16
    params = SecAggParams(prime_q=2 * precision * len(names) * 8, precision=precision, num_workers=len(names),
                          modulus_bits=modulus_bits, participants=participants, weighted=True)
    task_id = str(uuid.uuid4())
    rows = {name: 100 + i for i, name in enumerate(names)}

    def protect(name: str = names[0]) -> np.ndarray:
        return protect_update(arrays, params=params, task_id=task_id, me=name, my_round_key=keys[name],
                              n_rows=rows[name]).vector

    protect_s, protect_cpu_s = _median_time(protect, repeats)
    protect_mb = _peak_mb(protect)
    # Every pod sends the same update here, so the weighted mean is the update itself.
    blobs = [vector_to_bytes(protect(name)) for name in names]
    layout = Layout.from_arrays(arrays)

    def aggregate() -> dict[str, np.ndarray]:
        # From the received wire bytes to the mean, as the modeller does it.
        vectors = [vector_from_bytes(blob, layout=layout, params=params) for blob in blobs]
        return aggregate_masked(vectors, layout=layout, params=params).mean

    aggregate_s, aggregate_cpu_s = _median_time(aggregate, repeats)
    aggregate_mb = _peak_mb(aggregate)
    mean = aggregate()
    max_error = max(float(np.max(np.abs(mean[k] - arrays[k]))) for k in arrays)
    return {"modulus_bits": modulus_bits, "protect_s": protect_s, "protect_cpu_s": protect_cpu_s,
            "protect_peak_mb": protect_mb, "aggregate_s": aggregate_s, "aggregate_cpu_s": aggregate_cpu_s,
            "aggregate_peak_mb": aggregate_mb, "max_abs_error": max_error}


_FLOWER_SCRIPT = r"""
import json, statistics, sys, time, tracemalloc
import numpy as np
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
try:
    from flwr.supercore.primitives.asymmetric import generate_key_pairs
except ImportError:  # flwr < 1.2x kept it beside generate_shared_key
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_key_pairs
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine, factor_extract, parameters_addition, parameters_mod, parameters_multiply,
    parameters_subtraction)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

path = sys.argv[1]
peers, repeats = int(sys.argv[2]), int(sys.argv[3])
clip, levels, modulus = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
data = np.load(path)
arrays = [data[k] for k in sorted(data.files)]
me_sk, _ = generate_key_pairs()
peer_pks = [generate_key_pairs()[1] for _ in range(peers)]
max_weight, n_examples = 1000.0, 100

def client():
    # secaggplus_mod's fit stage, minus the private self-mask (we have none either)
    q_ratio = round(n_examples / max_weight * levels)
    params = parameters_multiply(arrays, q_ratio / levels)
    quantized = factor_combine(q_ratio, quantize(params, clip, levels))
    dims = [a.shape for a in quantized]
    for index, pk in enumerate(peer_pks):
        mask = pseudo_rand_gen(generate_shared_key(me_sk, pk), modulus, dims)
        quantized = (parameters_addition if index % 2 else parameters_subtraction)(quantized, mask)
    return parameters_mod(quantized, modulus)

def med(fn):
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time(); fn()
        cpus.append(time.process_time() - c); walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus)

def peak(fn):
    tracemalloc.start(); tracemalloc.reset_peak(); fn(); p = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    return p / 2**20

(client_s, client_cpu_s), client_mb = med(client), peak(client)
blobs = [[ndarray_to_bytes(a) for a in client()] for _ in range(peers + 1)]

def server():
    # what the workflow does with received masked vectors: deserialize, sum, mod, dequantize,
    # rescale (its self-mask removal is left out: we have no self-masks)
    vectors = [[bytes_to_ndarray(b) for b in blob] for blob in blobs]
    total = vectors[0]
    for v in vectors[1:]:
        total = parameters_addition(total, v)
    total = parameters_mod(total, modulus)
    q_total, total = factor_extract(total)
    out = dequantize(total, clip, levels)
    for arr in out:
        arr += -(len(vectors) - 1) * clip
        arr *= levels / q_total
    return out

(server_s, server_cpu_s), server_mb = med(server), peak(server)
import flwr
print(json.dumps({"flwr_version": flwr.__version__, "protect_s": client_s, "protect_cpu_s": client_cpu_s,
                  "protect_peak_mb": client_mb, "aggregate_s": server_s, "aggregate_cpu_s": server_cpu_s,
                  "aggregate_peak_mb": server_mb}))
"""


def _flower(arrays: dict[str, np.ndarray], *, repeats: int) -> dict[str, Any]:
    if not FLWR_PYTHON.exists():
        return {"skipped": f"no flwr venv at {FLWR_PYTHON} (python3 -m venv it; pip install flwr numpy)"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "update.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]  # mypy matches **dict against allow_pickle
        done = subprocess.run(
            [str(FLWR_PYTHON), "-c", _FLOWER_SCRIPT, str(path), str(PEERS), str(repeats), str(FLOWER_CLIP),
             str(FLOWER_LEVELS), str(FLOWER_MODULUS)],
            capture_output=True, text=True, check=False, timeout=1800,
        )
    if done.returncode != 0:
        return {"skipped": "flower run failed: " + done.stderr.strip().splitlines()[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(small: bool) -> dict[str, Any]:
    n_values = SMALL_VALUES if small else FULL_VALUES
    repeats = 5
    arrays = update_of(n_values)
    update_mb = sum(a.nbytes for a in arrays.values()) / 2**20
    ours32 = _ours(arrays, modulus_bits=32, repeats=repeats)
    ours64 = _ours(arrays, modulus_bits=64, repeats=repeats)
    flower = _flower(arrays, repeats=repeats)
    result: dict[str, Any] = {"values": n_values, "peers": PEERS, "update_mb": update_mb, "ours_u32": ours32,
                              "ours_u64": ours64, "flower": flower}
    result["protect_peak_x_update"] = ours32["protect_peak_mb"] / update_mb
    result["aggregate_peak_x_update"] = ours32["aggregate_peak_mb"] / update_mb
    if "skipped" not in flower:
        for part in ("protect", "aggregate"):
            result[f"speedup_{part}"] = flower[f"{part}_s"] / ours32[f"{part}_s"]
            result[f"speedup_{part}_cpu"] = flower[f"{part}_cpu_s"] / ours32[f"{part}_cpu_s"]
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"secagg: {result['values']:,} float32 values ({result['update_mb']:.1f} MiB), {result['peers']} peers")
    rows = [("ours u32", result["ours_u32"]), ("ours u64", result["ours_u64"]), ("flower", result["flower"])]
    print(f"{'':10} {'pod s':>8} {'pod cpu':>8} {'pod MiB':>8} {'agg s':>8} {'agg cpu':>8} {'agg MiB':>8}")
    for label, r in rows:
        if "skipped" in r:
            print(f"{label:10} skipped: {r['skipped']}")
            continue
        print(f"{label:10} {r['protect_s']:8.3f} {r['protect_cpu_s']:8.3f} {r['protect_peak_mb']:8.1f} "
              f"{r['aggregate_s']:8.3f} {r['aggregate_cpu_s']:8.3f} {r['aggregate_peak_mb']:8.1f}")
    if "speedup_protect" in result:
        print(f"speedup vs flower (wall / cpu): pod {result['speedup_protect']:.1f}x / "
              f"{result['speedup_protect_cpu']:.1f}x, aggregate {result['speedup_aggregate']:.1f}x / "
              f"{result['speedup_aggregate_cpu']:.1f}x")
    print(f"peak memory / update size (u32): pod {result['protect_peak_x_update']:.2f}x, "
          f"aggregate {result['aggregate_peak_x_update']:.2f}x")


def main() -> None:
    args = parser_for(__doc__, small_help="the smoke size CI runs").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
