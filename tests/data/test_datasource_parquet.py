"""Parquet datasources: a file or a directory, footers agreeing, types normalised."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pod_agent.data import open_datasource
from pod_agent.errors import DataError

COLUMNS = {
    "age": [30, 40, 50, 60],
    "income": [1.5, 2.5, None, 4.0],
    "sex": ["f", "m", "f", None],
    "member": [True, False, True, True],
}


def test_parquet_file_schema_and_row_count(write_parquet, section) -> None:
    ds = open_datasource(section(write_parquet("t.parquet", COLUMNS)))
    schema = ds.schema()
    assert ds.kind == "parquet"
    assert schema.row_count == 4
    assert [(c.name, c.arrow_type, c.stype, c.categories) for c in schema.columns] == [
        ("age", "int64", "categorical", ["30", "40", "50", "60"]),
        ("income", "double", "continuous", None),
        ("sex", "string", "categorical", ["f", "m"]),
        ("member", "bool", "categorical", ["false", "true"]),
    ]


def test_parquet_detected_by_magic_whatever_the_suffix(write_parquet, section) -> None:
    assert open_datasource(section(write_parquet("table.data", COLUMNS))).kind == "parquet"


def test_csv_and_parquet_of_the_same_table_hash_alike(write_parquet, write_file, section) -> None:
    csv = "age,income,sex,member\n30,1.5,f,true\n40,2.5,m,false\n50,,f,true\n60,4.0,,true\n"
    from_csv = open_datasource(section(write_file("t.csv", csv))).schema()
    from_parquet = open_datasource(section(write_parquet("t.parquet", COLUMNS))).schema()
    assert from_csv == from_parquet
    assert from_csv.hash() == from_parquet.hash()


def test_directory_of_files_is_one_table(tmp_path, write_parquet, section) -> None:
    write_parquet("dir/part-0.parquet", COLUMNS)
    write_parquet("dir/sub/part-1.parquet", COLUMNS)
    (tmp_path / "dir" / "_SUCCESS").write_text("")
    ds = open_datasource(section(tmp_path / "dir"))
    assert ds.schema().row_count == 8
    assert sum(b.num_rows for b in ds.batches(batch_rows=3)) == 8
    assert max(b.num_rows for b in ds.batches(batch_rows=3)) <= 3


def test_directory_whose_files_disagree_is_refused(tmp_path, write_parquet, section) -> None:
    write_parquet("dir/a.parquet", COLUMNS)
    write_parquet("dir/b.parquet", {**COLUMNS, "age": ["30", "40", "50", "60"]})
    with pytest.raises(
        DataError,
        match=r"Parquet files disagree on schema: column 'age' is int64 in a\.parquet but string in b\.parquet",
    ):
        open_datasource(section(tmp_path / "dir"))


def test_directory_with_an_extra_column_is_refused(tmp_path, write_parquet, section) -> None:
    write_parquet("dir/a.parquet", COLUMNS)
    write_parquet("dir/b.parquet", {**COLUMNS, "extra": [1, 2, 3, 4]})
    with pytest.raises(DataError, match=r"b\.parquet has column 'extra', a\.parquet does not"):
        open_datasource(section(tmp_path / "dir"))


def test_empty_directory_is_refused(tmp_path, section) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"directory holds no Parquet files"):
        open_datasource(section(tmp_path / "empty"))


def test_dictionary_columns_are_decoded(tmp_path, section) -> None:
    table = pa.table({"c": pa.array(["x", "y", "x"]).dictionary_encode()})
    pq.write_table(table, tmp_path / "d.parquet")
    ds = open_datasource(section(tmp_path / "d.parquet"))
    assert ds.schema().column("c").arrow_type == "string"
    assert next(iter(ds.batches())).column(0).type == pa.string()


def test_unusable_type_is_refused_unless_ignored(tmp_path, section) -> None:
    pq.write_table(pa.table({"a": [1, 2], "tags": [[1], [2, 3]]}), tmp_path / "l.parquet")
    with pytest.raises(
        DataError,
        match=r"column 'tags' has type list<.*>, which pod-agent cannot use - add it to datasource\.ignore_cols",
    ):
        open_datasource(section(tmp_path / "l.parquet")).schema()
    assert open_datasource(section(tmp_path / "l.parquet", ignore_cols=["tags"])).schema().names() == ["a"]


def test_forced_types_cast_the_batches(write_parquet, section) -> None:
    path = write_parquet("t.parquet", {"code": [1, 2, 3], "amount": ["1.5", "2", None]})
    ds = open_datasource(section(path, force_stypes={"text": ["code"], "continuous": ["amount"]}))
    assert [(c.arrow_type, c.stype) for c in ds.schema().columns] == [("string", "text"), ("double", "continuous")]
    batch = next(iter(ds.batches()))
    assert batch.to_pydict() == {"code": ["1", "2", "3"], "amount": [1.5, 2.0, None]}


def test_forced_continuous_on_text_is_refused(write_parquet, section) -> None:
    path = write_parquet("t.parquet", {"name": ["ann", "bob"]})
    with pytest.raises(
        DataError,
        match=r"column 'name' is forced continuous but does not convert to double "
        r"\(Failed to parse string: '(ann|bob)'",
    ):
        open_datasource(section(path, force_stypes={"continuous": ["name"]})).schema()


def test_forced_image_needs_paths(write_parquet, section) -> None:
    path = write_parquet("t.parquet", {"n": [1, 2]})
    with pytest.raises(DataError, match=r"column 'n' is forced image but holds int64"):
        open_datasource(section(path, force_stypes={"image": ["n"]})).schema()


def test_ignored_columns_never_reach_batches(write_parquet, section) -> None:
    ds = open_datasource(section(write_parquet("t.parquet", COLUMNS), ignore_cols=["sex"]))
    assert "sex" not in ds.schema().names()
    assert all(b.schema.names == ["age", "income", "member"] for b in ds.batches())
