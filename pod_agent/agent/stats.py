"""The built-in ``schema-stats`` task: aggregate facts about the pod's table, never rows.

Owns what such a task may return: the row count, per-column null counts, and the
mean and sample standard deviation of continuous columns, computed in one
streaming pass over the datasource's record batches (combined per batch with
Chan's parallel update, so a table larger than memory is fine). No category
values, minima, maxima or quantiles: those can be single rows' values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pod_agent.data import Datasource, Schema

# Rows per batch of the streaming pass; bounds memory whatever the table's size.
STATS_BATCH_ROWS = 65_536


@dataclass
class _Moments:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: pa.Array) -> None:
        as_float = pc.cast(values, pa.float64())
        n_b = len(as_float) - as_float.null_count
        if n_b == 0:
            return
        mean_b = pc.mean(as_float).as_py()
        m2_b = pc.variance(as_float, ddof=0).as_py() * n_b
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total

    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


def schema_stats(datasource: Datasource, schema: Schema) -> tuple[dict[str, float], int]:
    """Metrics named ``rows``, ``nulls.<col>``, ``mean.<col>``, ``std.<col>``; and the row count."""
    continuous = [c.name for c in schema.columns if c.stype == "continuous"]
    nulls = {c.name: 0 for c in schema.columns}
    moments = {name: _Moments() for name in continuous}
    rows = 0
    for batch in datasource.batches(batch_rows=STATS_BATCH_ROWS):
        rows += batch.num_rows
        for name in nulls:
            column = batch.column(name)
            nulls[name] += column.null_count
            if name in moments:
                moments[name].add(column)
    metrics: dict[str, float] = {"rows": float(rows)}
    for name, count in nulls.items():
        metrics[f"nulls.{name}"] = float(count)
    for name, m in moments.items():
        metrics[f"mean.{name}"] = m.mean
        metrics[f"std.{name}"] = m.std()
    return metrics, rows
