"""A pod's table as a Datasource: open it, learn its schema in one streaming pass, stream batches.

Owns choosing the reader (CSV file, Parquet file or directory), checking the configured
column lists against the real columns, dropping ``ignore_cols`` at the source (no schema
or batch ever carries them), and caching the schema on the object. Format details live in
``csvsource.py`` and ``parquetsource.py``; the schema model in ``schema.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa

from pod_agent.config.settings import DatasourceSection
from pod_agent.data import csvsource, parquetsource
from pod_agent.data.schema import Schema, Stype
from pod_agent.errors import DataError

DEFAULT_BATCH_ROWS = 65_536
_PARQUET_MAGIC = b"PAR1"


def open_datasource(section: DatasourceSection) -> Datasource:
    """Open the table the section describes; reads only the CSV header or the Parquet footers."""
    path = section.path
    if not path.exists():
        raise DataError(f"{path}: datasource not found - fix datasource.path in pod.toml")
    kind = _format(section)
    if kind == "csv" and path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV file - point datasource.path at the file")
    if path.is_file():
        _check_readable(path)
    if kind == "csv":
        csv_layout = csvsource.open_csv_layout(section)
        return Datasource(section, kind=kind, names=csv_layout.names, csv_layout=csv_layout)
    parquet_layout = parquetsource.open_parquet_layout(path)
    return Datasource(section, kind=kind, names=parquet_layout.arrow_schema.names, parquet_layout=parquet_layout)


def _format(section: DatasourceSection) -> Literal["csv", "parquet"]:
    if section.format != "auto":
        return section.format
    path = section.path
    if path.is_dir():
        return "parquet"
    try:
        with open(path, "rb") as handle:
            return "parquet" if handle.read(4) == _PARQUET_MAGIC else "csv"
    except OSError as exc:
        raise DataError(f"{path}: datasource unreadable ({exc.strerror}) - check its permissions") from exc


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise DataError(f"{path}: datasource unreadable ({exc.strerror}) - check its permissions") from exc


class Datasource:
    """One table. ``schema()`` and ``batches()`` never show the section's ``ignore_cols``."""

    def __init__(
        self,
        section: DatasourceSection,
        *,
        kind: Literal["csv", "parquet"],
        names: list[str],
        csv_layout: csvsource.CsvLayout | None = None,
        parquet_layout: parquetsource.ParquetLayout | None = None,
    ) -> None:
        self.section, self.kind = section, kind
        self._csv, self._parquet = csv_layout, parquet_layout
        self._forced = _forced_stypes(section, names)
        ignored = set(section.ignore_cols)
        missing = sorted(ignored - set(names))
        if missing:
            raise DataError(
                f"{section.path}: ignore_cols names columns that do not exist: {missing}"
                f" - the columns are {names}"
            )
        self.columns = [name for name in names if name not in ignored]
        if not self.columns:
            raise DataError(f"{section.path}: ignore_cols drops every column - leave at least one")
        self._schema: Schema | None = None
        self._csv_types: dict[str, pa.DataType] = {}

    @property
    def path(self) -> Path:
        return self.section.path

    def schema(self) -> Schema:
        """The visible columns' schema and the row count, from one streaming pass (then cached)."""
        if self._schema is None:
            if self._csv is not None:
                columns, rows, self._csv_types = csvsource.infer_csv(
                    self._csv, self.section, visible=self.columns, forced=self._forced
                )
            else:
                columns, rows = parquetsource.infer_parquet(
                    self._parquet_layout(),
                    visible=self.columns,
                    forced=self._forced,
                    max_unique=self.section.categorical_max_unique,
                )
            if rows == 0:
                what = "has a header but no rows" if self._csv is not None else "has no rows"
                raise DataError(f"{self.path}: the table {what} - point datasource.path at a table with data")
            self._schema = Schema(columns=columns, row_count=rows)
        return self._schema

    def batches(self, columns: list[str] | None = None, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_rows`` rows, typed as ``schema()`` says."""
        if batch_rows < 1:
            raise DataError(f"batch_rows must be at least 1, got {batch_rows}")
        self.schema()
        wanted = list(self.columns if columns is None else columns)
        unknown = [name for name in wanted if name not in self.columns]
        if unknown:
            raise DataError(f"{self.path}: no such column(s) {unknown} - the columns are {self.columns}")
        if self._csv is not None:
            return self._csv_batches(wanted, batch_rows=batch_rows)
        return parquetsource.typed_batches(
            self._parquet_layout(), wanted, self._parquet_types(), batch_rows=batch_rows
        )

    def _parquet_layout(self) -> parquetsource.ParquetLayout:
        if self._parquet is None:
            raise DataError(f"{self.path}: not opened as Parquet")
        return self._parquet

    def _parquet_types(self) -> dict[str, pa.DataType]:
        layout = self._parquet_layout()
        return {
            name: parquetsource.target_type(name, layout.arrow_schema.field(name).type, self._forced.get(name))
            for name in self.columns
        }

    def _csv_batches(self, columns: list[str], *, batch_rows: int) -> Iterator[pa.RecordBatch]:
        if self._csv is None:
            raise DataError(f"{self.path}: not opened as CSV")
        for batch in csvsource.clean_batches(self._csv, self.section, columns):
            arrays = []
            for name, column in zip(columns, batch.columns):
                try:
                    arrays.append(csvsource.to_type(column, self._csv_types[name]))
                except pa.ArrowInvalid as exc:
                    raise DataError(
                        f"{self.path}: column {name!r} no longer fits its schema type ({exc})"
                        " - the file changed after the schema was read; restart the agent"
                    ) from exc
            typed = pa.RecordBatch.from_arrays(arrays, names=columns)
            for start in range(0, typed.num_rows, batch_rows):
                yield typed.slice(start, batch_rows)


def _forced_stypes(section: DatasourceSection, names: list[str]) -> dict[str, Stype]:
    forced: dict[str, Stype] = {}
    for stype, columns in section.force_stypes.items():
        for name in columns:
            if name not in names:
                raise DataError(
                    f"{section.path}: force_stypes.{stype} names column {name!r}, which does not"
                    f" exist - the columns are {names}"
                )
            forced[name] = stype
    return forced
