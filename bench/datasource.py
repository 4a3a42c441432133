"""Benchmark: the datasource's schema inference and streaming pass on a wide Parquet table.

Generates (once, cached under the temp dir) a Parquet file of N rows x 20 mixed columns
(8 float, 4 int of which 2 low-cardinality, 5 low-cardinality strings, 1 unique string,
2 bool), then measures, each in a fresh subprocess so that peak RSS (the child's VmHWM
from /proc) belongs to that measurement alone:

- ``schema``:   open_datasource + Datasource.schema() (types, categories, row count)
- ``stream``:   a full pass over Datasource.batches() (all 20 columns, 65,536-row batches)
- ``pyarrow``:  a bare pyarrow.dataset scan of the same file (the floor for a streaming pass)
- ``pandas``:   pandas.read_parquet of the whole table (what a non-streaming reader costs)
- ``imports``:  the same interpreter with the imports only (RSS baseline)

Time excludes interpreter start-up and imports.

    python -m bench.datasource [--rows N] [--json]      (default 10,000,000)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import parser_for, show

DEFAULT_ROWS = 10_000_000
SMALL_ROWS = 200_000
_CHUNK_ROWS = 1_000_000
_MEASUREMENTS = ("imports", "schema", "stream", "pyarrow", "pandas")


def make_table(path: Path, rows: int, *, seed: int = 0) -> None:
    """Write the 20-column table in 1M-row row groups (never all of it in memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = pa.array([f"category-{i:02d}" for i in range(12)])
    tmp = path.with_suffix(".tmp")
    writer: pq.ParquetWriter | None = None
    for start in range(0, rows, _CHUNK_ROWS):
        n = min(_CHUNK_ROWS, rows - start)
        columns: dict[str, pa.Array] = {}
        for i in range(8):
            columns[f"f{i}"] = pa.array(rng.standard_normal(n))
        columns["i_low0"] = pa.array(rng.integers(0, 10, n))
        columns["i_low1"] = pa.array(rng.integers(0, 30, n))
        columns["i_high0"] = pa.array(rng.integers(0, 1_000_000, n))
        columns["i_high1"] = pa.array(np.arange(start, start + n))
        for i in range(5):
            indices = pa.array(rng.integers(0, 4 + 2 * i, n).astype(np.int32))
            columns[f"s_low{i}"] = pa.DictionaryArray.from_arrays(indices, words).cast(pa.string())
        columns["s_id"] = pc.binary_join_element_wise("user-", pc.cast(columns["i_high1"], pa.string()), "")
        columns["b0"] = pa.array(rng.random(n) < 0.5)
        columns["b1"] = pa.array(rng.random(n) < 0.1)
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    tmp.replace(path)


def table_path(rows: int) -> Path:
    folder = Path(tempfile.gettempdir()) / "pod-agent-bench"
    folder.mkdir(exist_ok=True)
    path = folder / f"datasource-{rows}.parquet"
    if not path.exists():
        make_table(path, rows)
    return path


def _measure_in_child(kind: str, path: Path) -> dict[str, Any]:
    """Body of one measurement; runs in the child process and prints JSON."""
    import pandas as pd
    import pyarrow.dataset as pads

    from pod_agent.config import DatasourceSection
    from pod_agent.data import open_datasource

    start = time.perf_counter()
    rows = 0
    if kind == "schema":
        rows = open_datasource(DatasourceSection(path=path)).schema().row_count
    elif kind == "stream":
        source = open_datasource(DatasourceSection(path=path))
        source.schema()
        start = time.perf_counter()
        rows = sum(batch.num_rows for batch in source.batches())
    elif kind == "pyarrow":
        rows = sum(batch.num_rows for batch in pads.dataset(str(path), format="parquet").to_batches())
    elif kind == "pandas":
        rows = len(pd.read_parquet(path))
    return {"seconds": time.perf_counter() - start, "rows": rows, "peak_rss_mb": _peak_rss_mb()}


def measure(kind: str, path: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its time, rows and peak RSS."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.datasource", "--child", kind, "--path", str(path)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measurement {kind} failed: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM).

    Not getrusage: on Linux a child's ru_maxrss starts from its parent's peak at fork, so a
    big parent would inflate every measurement.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def run(small: bool) -> dict[str, Any]:
    """All measurements at SMALL_ROWS (smoke) or DEFAULT_ROWS; the shape the bench runner records."""
    return run_rows(SMALL_ROWS if small else DEFAULT_ROWS)


def run_rows(rows: int, *, repeats: int = 3) -> dict[str, Any]:
    """Each measurement ``repeats`` times in fresh processes: median time, largest peak RSS."""
    started = time.perf_counter()
    path = table_path(rows)
    generate_s = time.perf_counter() - started
    results: dict[str, Any] = {"rows": rows, "columns": 20, "file_mb": round(path.stat().st_size / 2**20, 1)}
    results["generate_s"] = round(generate_s, 2)
    results["repeats"] = repeats
    for kind in _MEASUREMENTS:
        runs = [measure(kind, path) for _ in range(repeats)]
        entry: dict[str, Any] = {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        if kind != "imports":
            seconds = statistics.median(r["seconds"] for r in runs)
            entry["seconds"] = round(seconds, 3)
            entry["rows_per_s"] = round(rows / seconds) if seconds > 0 else None
        results[kind] = entry
    return results


def _print(result: dict[str, Any]) -> None:
    print(
        f"datasource benchmark: {result['rows']:,} rows x {result['columns']} columns,"
        f" {result['file_mb']} MB Parquet, median of {result['repeats']}"
    )
    print(f"{'measurement':<10} {'seconds':>9} {'rows/s':>14} {'peak RSS MB':>12}")
    for kind in _MEASUREMENTS:
        entry = result[kind]
        seconds = f"{entry['seconds']:.3f}" if "seconds" in entry else "-"
        rate = f"{entry['rows_per_s']:,}" if entry.get("rows_per_s") else "-"
        print(f"{kind:<10} {seconds:>9} {rate:>14} {entry['peak_rss_mb']:>12}")


def main() -> None:
    parser = parser_for(__doc__, small_help=None)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median time)")
    parser.add_argument("--child", choices=_MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure_in_child(args.child, args.path)))
        return
    show(run_rows(args.rows, repeats=args.repeats), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
