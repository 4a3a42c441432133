"""Parquet files, or a directory of them, as streams of record batches.

Owns finding the files, insisting that they all share one schema (checked from their footers
before any data is read), the row count from the footers, the per-column arrow type the
batches carry (dictionary columns decoded; forced text cast to string, forced continuous
strings cast to float64), and the streaming pass that collects distinct values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pod_agent.config import DatasourceSection
from pod_agent.data.infer import MAX_FORCED_CATEGORIES, DistinctValues, decide, tracks_distinct
from pod_agent.data.schema import ColumnSchema, Stype
from pod_agent.errors import DataError

_PASS_BATCH_ROWS = 65_536
_READ_BUFFER_BYTES = 1 << 20
# A dictionary page this small holds at most a few thousand short strings.
_SMALL_DICTIONARY_BYTES = 64 << 10


class ParquetTable:
    """A Parquet file or directory: names from the footers, schema from one pass, typed batches."""

    def __init__(self, section: DatasourceSection) -> None:
        self.section = section
        self.layout = open_parquet_layout(section.path)
        self.names: list[str] = self.layout.arrow_schema.names
        self._types: dict[str, pa.DataType] = {}

    def infer(self, *, visible: list[str], forced: dict[str, Stype]) -> tuple[list[ColumnSchema], int]:
        self._types = {
            name: target_type(name, self.layout.arrow_schema.field(name).type, forced.get(name)) for name in visible
        }
        return infer_parquet(
            self.layout, types=self._types, forced=forced, max_unique=self.section.categorical_max_unique
        )

    def batches(self, columns: list[str], *, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Batches typed as ``infer`` decided (call it first)."""
        return typed_batches(self.layout, columns, self._types, batch_rows=batch_rows)


@dataclass(frozen=True)
class ParquetLayout:
    """The files of a Parquet table and the schema they share (ignored columns included)."""

    path: Path
    files: list[Path]
    arrow_schema: pa.Schema


def open_parquet_layout(path: Path) -> ParquetLayout:
    """Read every file's footer; all must agree on the schema."""
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", "."))
        )
        if not files:
            raise DataError(f"{path}: directory holds no Parquet files - point datasource.path at the data")
    else:
        files = [path]
    first = _footer_schema(files[0])
    for other in files[1:]:
        schema = _footer_schema(other)
        if not schema.equals(first, check_metadata=False):
            raise DataError(
                f"{path}: Parquet files disagree on schema: {_difference(files[0], first, other, schema)}"
                " - rewrite them with one schema or point datasource.path at one of them"
            )
    return ParquetLayout(path=path, files=files, arrow_schema=first.remove_metadata())


def _footer_schema(file: Path) -> pa.Schema:
    try:
        if file.stat().st_size == 0:
            raise DataError(f"{file}: the file is empty - point datasource.path at a table with rows")
        return pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise DataError(f"{file}: cannot read as Parquet ({reason}) - check the file or datasource.format") from exc


def _difference(file_a: Path, a: pa.Schema, file_b: Path, b: pa.Schema) -> str:
    for name in a.names:
        if name not in b.names:
            return f"{file_a.name} has column {name!r}, {file_b.name} does not"
    for name in b.names:
        if name not in a.names:
            return f"{file_b.name} has column {name!r}, {file_a.name} does not"
    for name in a.names:
        type_a, type_b = a.field(name).type, b.field(name).type
        if type_a != type_b:
            return f"column {name!r} is {type_a} in {file_a.name} but {type_b} in {file_b.name}"
    return f"{file_a.name} and {file_b.name} order their columns differently"


def target_type(name: str, stored: pa.DataType, forced: Stype | None) -> pa.DataType:
    """The arrow type the batches carry for a column, or DataError for a column we cannot use."""
    arrow_type = _decoded(stored)
    is_string = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    if forced == "text":
        return arrow_type if is_string else pa.string()
    if forced == "image" and not is_string:
        raise DataError(
            f"column {name!r} is forced image but holds {arrow_type}, not file paths"
            " - remove it from force_stypes.image"
        )
    if forced == "continuous" and is_string:
        return pa.float64()
    usable = (
        is_string
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_temporal(arrow_type)
    )
    if not usable:
        raise DataError(
            f"column {name!r} has type {arrow_type}, which pod-agent cannot use"
            " - add it to datasource.ignore_cols"
        )
    return arrow_type


def typed_batches(
    layout: ParquetLayout, columns: list[str], types: dict[str, pa.DataType], *, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Batches of ``columns`` cast to ``types``, file after file."""
    target = pa.schema([(name, types[name]) for name in columns])
    for file in layout.files:
        try:
            for batch in _open(file).iter_batches(batch_size=batch_rows, columns=columns):
                yield batch if batch.schema.equals(target) else batch.cast(target)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: cannot read as Parquet ({str(exc).splitlines()[0]}) - check the file") from exc


def _open(file: Path, *, as_dictionary: list[str] | None = None) -> pq.ParquetFile:
    # Unbuffered whole-column-chunk reads (pyarrow's default, and its dataset scanner's
    # read-ahead) hold several decoded row groups at once: ~1.7 GB for a 10M x 20 table
    # against ~0.3 GB read through a small buffer, at the same speed.
    return pq.ParquetFile(
        file, buffer_size=_READ_BUFFER_BYTES, pre_buffer=False, read_dictionary=as_dictionary
    )


def infer_parquet(
    layout: ParquetLayout, *, types: dict[str, pa.DataType], forced: dict[str, Stype], max_unique: int
) -> tuple[list[ColumnSchema], int]:
    """Schema of the columns in ``types`` (their batch types): distinct values from one pass."""
    visible = list(types)
    trackers: dict[str, DistinctValues] = {}
    for name in visible:
        kind = forced.get(name)
        if kind == "categorical":
            trackers[name] = DistinctValues(limit=MAX_FORCED_CATEGORIES)
        elif kind is None and tracks_distinct(types[name]):
            trackers[name] = DistinctValues(limit=max_unique)
    # Strings forced continuous are read too: casting every value to float64 checks it.
    cast_checked = {n for n in visible if types[n] != _decoded(layout.arrow_schema.field(n).type)}
    rows = 0
    for file in layout.files:
        rows += _pass_over_file(file, trackers=trackers, cast_checked=cast_checked, types=types, forced=forced)
    columns = [decide(name, types[name], forced=forced.get(name), distinct=trackers.get(name)) for name in visible]
    return columns, rows


def _pass_over_file(
    file: Path,
    *,
    trackers: dict[str, DistinctValues],
    cast_checked: set[str],
    types: dict[str, pa.DataType],
    forced: dict[str, Stype],
) -> int:
    """Feed one file's values to the trackers; return its row count (from the footer).

    Reads row group by row group so that a column stops being read once it is settled
    (more distinct values than a category list may hold), e.g. ids after the first group.
    """
    try:
        strings = [n for n in trackers if n not in cast_checked and pa.types.is_string(types[n])]
        parquet = _open(file, as_dictionary=_small_dictionaries(pq.read_metadata(file), strings))
        for group in range(parquet.num_row_groups):
            needed = [n for n in types if n in cast_checked or (n in trackers and not trackers[n].overflowed)]
            if not needed:
                break
            for batch in parquet.iter_batches(batch_size=_PASS_BATCH_ROWS, row_groups=[group], columns=needed):
                for name, column in zip(needed, batch.columns, strict=True):
                    if name in cast_checked:
                        column = _cast_checked(name, column, types[name], forced.get(name))
                    if name in trackers:
                        trackers[name].add(column)
        return int(parquet.metadata.num_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{file}: cannot read as Parquet ({str(exc).splitlines()[0]}) - check the file") from exc


def _small_dictionaries(metadata: pq.FileMetaData, names: list[str]) -> list[str]:
    """Columns whose first row group has a small dictionary page: few distinct values.

    Those are read as dictionaries, so distinct values come from the dictionary instead of
    hashing every row's string; a large dictionary (an id column) would only cost memory.
    """
    if metadata.num_row_groups == 0:
        return []
    group = metadata.row_group(0)
    small: list[str] = []
    for i in range(group.num_columns):
        chunk = group.column(i)
        if (
            chunk.path_in_schema in names and chunk.has_dictionary_page and chunk.dictionary_page_offset is not None
            and chunk.data_page_offset - chunk.dictionary_page_offset <= _SMALL_DICTIONARY_BYTES
        ):
            small.append(chunk.path_in_schema)
    return small


def _decoded(arrow_type: pa.DataType) -> pa.DataType:
    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def _cast_checked(name: str, column: pa.Array, arrow_type: pa.DataType, forced: Stype | None) -> pa.Array:
    try:
        return column.cast(arrow_type)
    except pa.ArrowInvalid as exc:
        raise DataError(
            f"column {name!r} is forced {forced} but does not convert to {arrow_type}"
            f" ({str(exc).splitlines()[0]}) - remove it from force_stypes.{forced} or clean the column"
        ) from exc
