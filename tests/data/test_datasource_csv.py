"""CSV datasources: types, semantic types, options from the config, ignore_cols, batches."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pod_agent.data import open_datasource
from pod_agent.errors import DataError

MIXED = """id,height,smoker,colour,note,grade
1,1.5,true,red,first note,10
2,1.75,false,blue,second note,2
3,,True,red,third note,2
4,2.0,FALSE,green,fourth note,10
"""


def test_types_and_semantic_types_are_inferred(write_file, section) -> None:
    ds = open_datasource(section(write_file("t.csv", MIXED), categorical_max_unique=3))
    schema = ds.schema()
    assert schema.row_count == 4
    got = {c.name: (c.arrow_type, c.stype, c.categories) for c in schema.columns}
    assert got == {
        "id": ("int64", "continuous", None),
        "height": ("double", "continuous", None),
        "smoker": ("bool", "categorical", ["false", "true"]),
        "colour": ("string", "categorical", ["blue", "green", "red"]),
        "note": ("string", "text", None),
        "grade": ("int64", "categorical", ["2", "10"]),
    }


def test_batches_carry_the_schema_types(write_file, section) -> None:
    ds = open_datasource(section(write_file("t.csv", MIXED)))
    batches = list(ds.batches())
    table = pa.Table.from_batches(batches)
    assert [str(t) for t in table.schema.types] == [c.arrow_type for c in ds.schema().columns]
    assert table.column("height").to_pylist() == [1.5, 1.75, None, 2.0]
    assert table.column("smoker").to_pylist() == [True, False, True, False]


def test_batches_respect_batch_rows_and_column_selection(write_file, section) -> None:
    rows = "\n".join(f"{i},{i % 3}" for i in range(1000))
    ds = open_datasource(section(write_file("t.csv", "a,b\n" + rows + "\n")))
    batches = list(ds.batches(columns=["b"], batch_rows=300))
    assert [b.num_rows for b in batches] == [300, 300, 300, 100]
    assert all(b.schema.names == ["b"] for b in batches)


def test_unknown_column_in_batches_is_refused(write_file, section) -> None:
    ds = open_datasource(section(write_file("t.csv", MIXED)))
    with pytest.raises(DataError, match=r"no such column\(s\) \['weight'\]"):
        ds.batches(columns=["weight"])


def test_raw_export_reads_by_configuration_alone(write_file, section) -> None:
    raw = "junk first line\n 39, State-gov, ?\n 50 , ?, >50K.\n\n"
    ds = open_datasource(
        section(
            write_file("raw.data", raw),
            csv_has_header=False,
            csv_column_names=["age", "workclass", "label"],
            csv_skip_rows=1,
        )
    )
    table = pa.Table.from_batches(list(ds.batches()))
    assert table.to_pydict() == {"age": [39, 50], "workclass": ["State-gov", None], "label": [None, ">50K."]}


def test_semicolon_delimiter_and_custom_null_markers(write_file, section) -> None:
    ds = open_datasource(
        section(write_file("t.csv", "a;b\n1;-\n2;x\n"), csv_delimiter=";", csv_null_values=["-"])
    )
    assert pa.Table.from_batches(list(ds.batches())).to_pydict() == {"a": [1, 2], "b": [None, "x"]}


def test_whitespace_is_kept_when_trimming_is_off(write_file, section) -> None:
    ds = open_datasource(section(write_file("t.csv", "a,b\n x,1\n"), csv_trim_whitespace=False))
    assert pa.Table.from_batches(list(ds.batches())).column("a").to_pylist() == [" x"]


def test_header_can_be_renamed_by_csv_column_names(write_file, section) -> None:
    ds = open_datasource(section(write_file("t.csv", "A,B\n1,2\n"), csv_column_names=["x", "y"]))
    assert ds.schema().names() == ["x", "y"]
    assert ds.schema().row_count == 1


def test_latin1_file_reads_with_csv_encoding(write_file, section) -> None:
    path = write_file("t.csv", "city,n\nMünchen,1\nKöln,2\n".encode("latin-1"))
    ds = open_datasource(section(path, csv_encoding="latin-1"))
    assert ds.schema().column("city").categories == ["Köln", "München"]


def test_ignored_columns_are_invisible_everywhere(write_file, section) -> None:
    ds = open_datasource(section(write_file("t.csv", MIXED), ignore_cols=["note", "id"]))
    assert ds.schema().names() == ["height", "smoker", "colour", "grade"]
    assert all("note" not in b.schema.names for b in ds.batches())
    with pytest.raises(DataError, match=r"no such column"):
        ds.batches(columns=["note"])


def test_forced_stypes_override_inference(write_file, section) -> None:
    ds = open_datasource(
        section(
            write_file("t.csv", MIXED),
            force_stypes={"categorical": ["height"], "text": ["colour", "grade"], "image": ["note"]},
        )
    )
    schema = ds.schema()
    assert schema.column("height").categories == ["1.5", "1.75", "2"]
    assert (schema.column("grade").stype, schema.column("grade").arrow_type) == ("text", "string")
    assert schema.column("colour").stype == "text"
    assert schema.column("note").stype == "image"
    assert pa.Table.from_batches(list(ds.batches(["grade"]))).column("grade").to_pylist() == ["10", "2", "2", "10"]


def test_high_cardinality_integers_are_continuous_and_strings_text(write_file, section) -> None:
    rows = "\n".join(f"{i},s{i}" for i in range(60))
    schema = open_datasource(section(write_file("t.csv", "n,s\n" + rows + "\n"))).schema()
    assert [(c.stype, c.categories) for c in schema.columns] == [("continuous", None), ("text", None)]


def test_mixed_numbers_and_text_name_the_column_and_rows(write_file, section) -> None:
    path = write_file("t.csv", "a,b\n1,x\n2,y\nthree,z\n")
    with pytest.raises(
        DataError, match=r"column 'a' mixes numbers \(data row 1\) and text \(data row 3: 'three'\).*force_stypes\.text"
    ):
        open_datasource(section(path)).schema()


def test_mixed_column_forced_to_text_is_read_as_text(write_file, section) -> None:
    path = write_file("t.csv", "a,b\n1,x\n2,y\nthree,z\n")
    schema = open_datasource(section(path, force_stypes={"text": ["a"]})).schema()
    assert schema.column("a").arrow_type == "string"


def test_forced_continuous_text_column_is_refused(write_file, section) -> None:
    with pytest.raises(DataError, match=r"column 'colour' is forced continuous but holds text \(data row 1: 'red'\)"):
        open_datasource(section(write_file("t.csv", MIXED), force_stypes={"continuous": ["colour"]})).schema()


def test_large_file_streams_in_many_batches(write_file, section) -> None:
    body = "".join(f"{i},{i * 0.5},c{i % 7}\n" for i in range(200_000))
    ds = open_datasource(section(write_file("big.csv", "a,b,c\n" + body)))
    assert ds.schema().row_count == 200_000
    assert ds.schema().column("c").stype == "categorical"
    assert len(list(ds.batches(batch_rows=65_536))) >= 4


def test_bool_stays_categorical_under_a_tiny_category_limit(write_file, section) -> None:
    schema = open_datasource(section(write_file("t.csv", "b\ntrue\nFalse\n"), categorical_max_unique=1)).schema()
    assert (schema.column("b").stype, schema.column("b").categories) == ("categorical", ["false", "true"])
