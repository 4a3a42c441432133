"""Bad tables give one clear line (DataError) naming the file, the problem and the fix."""

from __future__ import annotations

import os

import pytest

from pod_agent.data import open_datasource
from pod_agent.errors import DataError


def _fails(section, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        open_datasource(section).schema()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path, section) -> None:
    _fails(section(tmp_path / "nope.csv"), r"nope\.csv: datasource not found - fix datasource\.path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(write_file, section) -> None:
    path = write_file("t.csv", "a\n1\n")
    path.chmod(0)
    _fails(section(path), r"datasource unreadable \(Permission denied\) - check its permissions")


def test_directory_given_as_csv(tmp_path, section) -> None:
    _fails(section(tmp_path, format="csv"), r"is a directory, not a CSV file")


def test_empty_csv(write_file, section) -> None:
    _fails(section(write_file("t.csv", "")), r"t\.csv: the file is empty")


def test_header_only_csv(write_file, section) -> None:
    _fails(section(write_file("t.csv", "a,b,c\n")), r"t\.csv: the table has a header but no rows")


def test_ragged_row_names_its_line(write_file, section) -> None:
    text = "a,b,c\n1,2,3\n4,5,6\n7,8\n9,10,11\n"
    _fails(section(write_file("t.csv", text)), r"t\.csv: line 4 has 2 fields, expected 3 - fix that row")


def test_ragged_row_line_counts_skipped_lines(write_file, section) -> None:
    text = "# exported 2024\na,b\n1,2\n3,4,5\n"
    _fails(section(write_file("t.csv", text), csv_skip_rows=1), r"line 4 has 3 fields, expected 2")


def test_mixed_types_in_a_column(write_file, section) -> None:
    rows = "".join(f"{i},x\n" for i in range(100)) + "n/a-ish,y\n"
    _fails(
        section(write_file("t.csv", "a,b\n" + rows)),
        r"column 'a' mixes numbers \(data row 1\) and text \(data row 101: 'n/a-ish'\)",
    )


def test_non_utf8_file(write_file, section) -> None:
    path = write_file("t.csv", "name,n\nJosé,1\n".encode("latin-1"))
    _fails(section(path), r"t\.csv: not valid utf-8 text - set datasource\.csv_encoding")


def test_non_utf8_header(write_file, section) -> None:
    path = write_file("t.csv", "nom_é,n\nx,1\n".encode("latin-1"))
    _fails(section(path), r"not valid utf-8 text")


def test_no_header_without_column_names(write_file, section) -> None:
    _fails(
        section(write_file("t.csv", "1,2\n"), csv_has_header=False),
        r"csv_column_names is empty - list the column names",
    )


def test_column_names_that_do_not_match_the_header(write_file, section) -> None:
    _fails(
        section(write_file("t.csv", "a,b\n1,2\n"), csv_column_names=["x"]),
        r"header has 2 columns but csv_column_names lists 1",
    )


def test_duplicate_header_names(write_file, section) -> None:
    _fails(section(write_file("t.csv", "a,a\n1,2\n")), r"duplicate column names \['a'\]")


def test_forced_column_that_does_not_exist(write_file, section) -> None:
    path = write_file("t.csv", "a,b\n1,2\n")
    _fails(
        section(path, force_stypes={"categorical": ["TARGET"]}),
        r"force_stypes\.categorical names column 'TARGET', which does not exist - the columns are \['a', 'b'\]",
    )


def test_ignored_column_that_does_not_exist(write_file, section) -> None:
    _fails(
        section(write_file("t.csv", "a,b\n1,2\n"), ignore_cols=["ssn"]),
        r"ignore_cols names columns that do not exist: \['ssn'\]",
    )


def test_ignoring_every_column(write_file, section) -> None:
    _fails(section(write_file("t.csv", "a\n1\n"), ignore_cols=["a"]), r"ignore_cols drops every column")


def test_empty_parquet_file(write_file, section) -> None:
    _fails(section(write_file("t.parquet", b""), format="parquet"), r"t\.parquet: the file is empty")


def test_garbage_declared_parquet(write_file, section) -> None:
    _fails(
        section(write_file("t.parquet", b"not parquet at all"), format="parquet"),
        r"t\.parquet: cannot read as Parquet \(.*\) - check the file",
    )


def test_parquet_without_rows(write_parquet, section) -> None:
    import pyarrow as pa

    path = write_parquet("t.parquet", {"a": pa.array([], type=pa.int64())})
    _fails(section(path), r"t\.parquet: the table has no rows")


def test_forced_category_explosion(write_file, section, monkeypatch) -> None:
    from pod_agent.data import infer

    monkeypatch.setattr(infer, "MAX_FORCED_CATEGORIES", 5)
    from pod_agent.data import csvsource

    monkeypatch.setattr(csvsource, "MAX_FORCED_CATEGORIES", 5)
    rows = "".join(f"{i}\n" for i in range(100))
    _fails(
        section(write_file("t.csv", "a\n" + rows), force_stypes={"categorical": ["a"]}),
        r"forced categorical but has more than 5 distinct values",
    )
