"""The compact tabular layout: its rows expand to exactly the dense encoding the feature names describe."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pod_agent.config.settings import DatasourceSection
from pod_agent.data import Datasource, dense_x, open_datasource, prepare_task_input
from pod_agent.data.task_input import HASHED_BUCKETS
from pod_agent.protocol.messages import DataSelection

ROWS = 600
LISTED = ("blue", "green")  # the schema the pod prepares with lists these; "red" is a value it does not list


def _columns(n: int) -> dict[str, list[object]]:
    rng = np.random.default_rng(5)
    picked = rng.choice(["red", *LISTED], size=n)
    colour = [None if r < 0.1 else str(c) for r, c in zip(rng.random(n), picked, strict=True)]
    size = [None if r < 0.05 else float(v) for r, v in zip(rng.random(n), rng.normal(50.0, 10.0, size=n), strict=True)]
    return {"colour": colour, "size": size, "label": [str(v) for v in rng.choice(["yes", "no"], size=n)]}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Datasource:
    path = tmp_path_factory.mktemp("layout") / "t.parquet"
    pq.write_table(pa.table(_columns(ROWS)), path)
    return open_datasource(DatasourceSection(path=path))


def _prepare(ds: Datasource, selection: DataSelection, out: Path) -> tuple[pa.Table, dict[str, object]]:
    schema = ds.schema()
    narrowed = schema.model_copy(update={"columns": [
        c.model_copy(update={"categories": list(LISTED)}) if c.name == "colour" else c for c in schema.columns
    ]})
    prepared = prepare_task_input(ds, narrowed, selection, out, share_categories=True)
    with pa.memory_map(str(prepared.path)) as file:
        return pa.ipc.open_file(file).read_all(), prepared.datastructure


def _hashed_slot(value: str) -> int:
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "big") % HASHED_BUCKETS


@pytest.mark.parametrize("encoding", ["one-hot", "hashed"])
def test_compact_rows_expand_to_exactly_the_dense_encoding(source: Datasource, tmp_path: Path, encoding: str) -> None:
    selection = DataSelection(target="label", columns=["colour", "size"], categorical_encoding=encoding)  # type: ignore[arg-type]
    table, structure = _prepare(source, selection, tmp_path)
    names: list[str] = structure["feature_names"]  # type: ignore[assignment]
    columns = _columns(ROWS)  # no target is missing: the file's rows are the source's, in order
    expected = np.zeros((ROWS, len(names)), dtype=np.float32)
    for row, value in enumerate(columns["colour"]):
        if encoding == "one-hot":  # a missing or unlisted value takes the reserved slot
            expected[row, names.index(f"colour={value if value in LISTED else '<other>'}")] = 1.0
        elif value is not None:  # hashed: a missing value sets no slot
            expected[row, names.index(f"colour#{_hashed_slot(str(value))}")] = 1.0
    sizes = np.array([np.nan if v is None else v for v in columns["size"]])
    train = sizes[(table.column("split").to_numpy() == 0) & ~np.isnan(sizes)]
    expected[:, names.index("size")] = np.nan_to_num((sizes - train.mean()) / train.std(), nan=0.0)

    x = dense_x(table)
    assert x.dtype == np.float32 and x.shape == (ROWS, structure["input_size"])
    at = names.index("size")
    assert np.array_equal(np.delete(x, at, axis=1), np.delete(expected, at, axis=1))
    np.testing.assert_allclose(x[:, at], expected[:, at], rtol=1e-5, atol=1e-6)
    # Two columns a row, not input_size floats: what makes preparing (and hashing) the file cheap.
    assert table.schema.field("x").type.list_size == 1 and table.schema.field("slots").type.list_size == 1


@pytest.mark.parametrize("encoding", ["one-hot", "hashed"])
def test_a_selection_of_one_kind_of_column_expands_as_its_part_of_the_whole(
    source: Datasource, tmp_path: Path, encoding: str
) -> None:
    def selection(*columns: str) -> DataSelection:
        return DataSelection(target="label", columns=list(columns), categorical_encoding=encoding)  # type: ignore[arg-type]

    whole, structure = _prepare(source, selection("colour", "size"), tmp_path / "w")
    at = structure["feature_names"].index("size")  # type: ignore[attr-defined]
    # Hashed, a row whose colour is missing then sets nothing at all.
    only_colour, _ = _prepare(source, selection("colour"), tmp_path / "c")
    only_size, _ = _prepare(source, selection("size"), tmp_path / "s")
    assert np.array_equal(dense_x(only_colour), np.delete(dense_x(whole), at, axis=1))
    assert np.array_equal(dense_x(only_size), dense_x(whole)[:, [at]])
