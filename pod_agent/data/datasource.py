"""A pod's table as a Datasource: open it, learn its schema in one streaming pass, stream batches.

Owns choosing the reader (CSV file, Parquet file or directory, a folder of images per class), checking the configured
column lists against the real columns, dropping ``ignore_cols`` at the source (no schema
or batch ever carries them), and caching the schema on the object. Format details live in
``csvsource.py``, ``parquetsource.py`` and ``images.py``; the schema model in ``schema.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa

from pod_agent.config import DatasourceSection
from pod_agent.data.csvsource import CsvTable
from pod_agent.data.images import ImageFolderTable
from pod_agent.data.parquetsource import ParquetTable
from pod_agent.data.schema import Schema, Stype
from pod_agent.errors import DataError

DEFAULT_BATCH_ROWS = 65_536
# Path, inode, size and mtime (ns) of each data file (``Datasource.identity``).
FileIdentity = list[list[str | int]]
Format = Literal["csv", "parquet", "image-folders"]
_PARQUET_MAGIC = b"PAR1"


def open_datasource(section: DatasourceSection) -> Datasource:
    """Open the table the section describes; reads only the CSV header or the Parquet footers."""
    path = section.path
    if not path.exists():
        raise DataError(f"{path}: datasource not found - fix datasource.path in pod.toml")
    kind = _format(section)
    if kind == "csv" and path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV file - point datasource.path at the file")
    if kind == "image-folders" and not path.is_dir():
        raise DataError(f"{path}: is not a directory - image-folders needs <path>/<class>/<image>")
    if path.is_file():
        _check_readable(path)
    table: CsvTable | ParquetTable | ImageFolderTable
    if kind == "image-folders":
        table = ImageFolderTable(section)
    else:
        table = CsvTable(section) if kind == "csv" else ParquetTable(section)
    return Datasource(section, kind=kind, table=table)


def _format(section: DatasourceSection) -> Format:
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
        self, section: DatasourceSection, *, kind: Format, table: CsvTable | ParquetTable | ImageFolderTable
    ) -> None:
        self.section, self.kind, self._table = section, kind, table
        names = table.names
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

    @property
    def path(self) -> Path:
        return self.section.path

    def identity(self) -> FileIdentity:
        """Path, inode, size and mtime (ns) of each data file, the images a table's rows name included: what
        changes when the data does, for the caches of what is prepared from it (``input_cache``,
        ``column_store``)."""
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        if self.section.images is not None and self.section.images.dir != self.path:
            # The images a table's rows name are data too: a changed image makes a new key.
            files += sorted(p for p in self.section.images.dir.rglob("*") if p.is_file())
        identity: FileIdentity = []
        for path in files:
            st = path.stat()
            identity.append([str(path), st.st_ino, st.st_size, st.st_mtime_ns])
        return identity

    def schema(self) -> Schema:
        """The visible columns' schema and the row count, from one streaming pass (then cached)."""
        if self._schema is None:
            columns, rows = self._table.infer(visible=self.columns, forced=self._forced)
            if rows == 0:
                what = "has a header but no rows" if self.kind == "csv" else "has no rows"
                raise DataError(f"{self.path}: the table {what} - point datasource.path at a table with data")
            self._schema = Schema(columns=columns, row_count=rows)
        return self._schema

    def batches(
        self, columns: list[str] | None = None, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_rows`` rows, typed as ``schema()`` says."""
        if batch_rows < 1:
            raise DataError(f"batch_rows must be at least 1, got {batch_rows}")
        self.schema()
        wanted = list(self.columns if columns is None else columns)
        unknown = [name for name in wanted if name not in self.columns]
        if unknown:
            raise DataError(f"{self.path}: no such column(s) {unknown} - the columns are {self.columns}")
        return self._table.batches(wanted, batch_rows=batch_rows)


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
