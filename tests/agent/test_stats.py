"""The built-in schema-stats task: aggregates from a streaming pass, no row values."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pod_agent.agent import stats
from pod_agent.config import DatasourceSection
from pod_agent.data import open_datasource


def test_stats_match_a_whole_table_computation_across_many_batches(
    adult_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats, "STATS_BATCH_ROWS", 997)  # many uneven batches
    ds = open_datasource(DatasourceSection(path=adult_csv))
    schema = ds.schema()
    metrics, rows = stats.schema_stats(ds, schema)
    table = pa.Table.from_batches(list(ds.batches()))
    assert rows == table.num_rows == schema.row_count == metrics["rows"]
    for column in schema.columns:
        assert metrics[f"nulls.{column.name}"] == table[column.name].null_count
        if column.stype == "continuous":
            values = pc.cast(table[column.name], pa.float64())
            assert math.isclose(metrics[f"mean.{column.name}"], pc.mean(values).as_py(), rel_tol=1e-9)
            assert math.isclose(metrics[f"std.{column.name}"], pc.stddev(values, ddof=1).as_py(), rel_tol=1e-9)
        else:
            assert f"mean.{column.name}" not in metrics


def test_only_aggregate_names_are_returned(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("x,city\n1.5,oslo\n,bergen\n3.5,oslo\n")
    ds = open_datasource(DatasourceSection(path=path))
    metrics, rows = stats.schema_stats(ds, ds.schema())
    assert rows == 3
    assert metrics == {
        "rows": 3.0,
        "nulls.x": 1.0,
        "nulls.city": 0.0,
        "mean.x": 2.5,
        "std.x": pytest.approx(math.sqrt(2)),
    }
    assert not any("oslo" in k or "bergen" in k for k in metrics)
