"""CSV files as streams of record batches, read by configuration alone.

Owns pyarrow's streaming CSV reader with the DatasourceSection's options (header or given
names, skipped lines, delimiter, encoding), whitespace trimming and null markers, the
per-column choice of int64 / float64 / bool / string over the whole file, and turning
pyarrow's failures into one-line DataErrors (empty file, ragged row with its line number,
invalid UTF-8, a column that mixes numbers and text). Every column is read as text first so
that trimming and null markers apply before any type is chosen.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pod_agent.config import DatasourceSection
from pod_agent.data.infer import MAX_FORCED_CATEGORIES, DistinctValues, decide
from pod_agent.data.schema import ColumnSchema, Stype
from pod_agent.errors import DataError

# pyarrow's parse unit; rows are re-sliced to the caller's batch size afterwards.
_BLOCK_BYTES = 4 << 20
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$"
_NUMBER_RE = re.compile(_NUMBER, flags=re.IGNORECASE)
_BOOL_WORDS = pa.array(["true", "false"])


class CsvTable:
    """A CSV file: its column names at once, its schema from one pass, then typed batches."""

    def __init__(self, section: DatasourceSection) -> None:
        self.section = section
        self.layout = open_csv_layout(section)
        self.names = self.layout.names
        self._types: dict[str, pa.DataType] = {}

    def infer(self, *, visible: list[str], forced: dict[str, Stype]) -> tuple[list[ColumnSchema], int]:
        columns, rows, self._types = infer_csv(self.layout, self.section, visible=visible, forced=forced)
        return columns, rows

    def batches(self, columns: list[str], *, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Batches typed as ``infer`` decided (call it first), sliced to ``batch_rows``."""
        for batch in clean_batches(self.layout, self.section, columns):
            arrays = []
            for name, column in zip(columns, batch.columns, strict=True):
                try:
                    arrays.append(to_type(column, self._types[name]))
                except pa.ArrowInvalid as exc:
                    raise DataError(
                        f"{self.layout.path}: column {name!r} no longer fits its schema type"
                        f" ({str(exc).splitlines()[0]}) - the file changed after the schema was read;"
                        " restart the agent"
                    ) from exc
            typed = pa.RecordBatch.from_arrays(arrays, names=columns)
            for start in range(0, typed.num_rows, batch_rows):
                yield typed.slice(start, batch_rows)


@dataclass(frozen=True)
class CsvLayout:
    """Where a CSV file is and how to parse it; ``names`` are all columns, ignored ones included."""

    path: Path
    names: list[str]
    read_options: pacsv.ReadOptions
    parse_options: pacsv.ParseOptions
    null_values: pa.Array
    trim: bool


def open_csv_layout(section: DatasourceSection) -> CsvLayout:
    """Learn the column names (from the header or the config) without reading past the first block."""
    path = section.path
    parse_options = pacsv.ParseOptions(delimiter=section.csv_delimiter)
    skip = section.csv_skip_rows
    if not section.csv_has_header and not section.csv_column_names:
        raise DataError(
            f"{path}: datasource.csv_has_header is false but csv_column_names is empty"
            " - list the column names in pod.toml"
        )
    if section.csv_has_header:
        header = _read_header(path, section, parse_options)
        if section.csv_column_names and len(section.csv_column_names) != len(header):
            raise DataError(
                f"{path}: header has {len(header)} columns but csv_column_names lists"
                f" {len(section.csv_column_names)} - list one name per column"
            )
        names = section.csv_column_names or header
        skip += 1
    else:
        names = list(section.csv_column_names)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate column names {duplicates} - give every column its own name")
    read_options = pacsv.ReadOptions(
        column_names=names, skip_rows=skip, block_size=_BLOCK_BYTES, encoding=section.csv_encoding
    )
    return CsvLayout(
        path=path,
        names=names,
        read_options=read_options,
        parse_options=parse_options,
        null_values=pa.array(section.csv_null_values, type=pa.string()),
        trim=section.csv_trim_whitespace,
    )


def _read_header(path: Path, section: DatasourceSection, parse_options: pacsv.ParseOptions) -> list[str]:
    """The header row, parsed with the stdlib csv module (pyarrow would parse a whole block)."""
    try:
        with open(path, encoding=section.csv_encoding, newline="") as handle:
            for _ in range(section.csv_skip_rows):
                handle.readline()
            header = next(csv.reader(handle, delimiter=parse_options.delimiter), None)
    except UnicodeDecodeError as exc:
        raise csv_error(exc, path=path, section=section, n_columns=None) from exc
    if not header:
        raise DataError(f"{path}: the file is empty - point datasource.path at a table with rows")
    return [name.strip() if section.csv_trim_whitespace else name for name in header]


def clean_batches(layout: CsvLayout, section: DatasourceSection, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Batches of ``columns`` as strings, trimmed, with null markers turned into nulls."""
    convert_options = pacsv.ConvertOptions(
        include_columns=columns,
        column_types={name: pa.string() for name in columns},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        reader = pacsv.open_csv(
            layout.path,
            read_options=layout.read_options,
            parse_options=layout.parse_options,
            convert_options=convert_options,
        )
        for batch in reader:
            yield pa.RecordBatch.from_arrays(
                [_clean(layout, batch.column(i)) for i in range(batch.num_columns)], names=columns
            )
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
        raise csv_error(exc, path=layout.path, section=section, n_columns=len(layout.names)) from exc


def _clean(layout: CsvLayout, array: pa.Array) -> pa.Array:
    if layout.trim:
        array = pc.utf8_trim_whitespace(array)
    missing = pc.is_in(array, value_set=layout.null_values)
    return pc.if_else(missing, pa.scalar(None, pa.string()), array)


@dataclass
class _ColumnKind:
    """What the non-null values of one column have looked like so far."""

    name: str
    forced: Stype | None
    distinct: DistinctValues | None
    all_int: bool = True
    all_bool: bool = True
    first_number_row: int | None = None
    first_text_row: int | None = None
    first_text: str | None = None

    def add(self, array: pa.Array, *, row_offset: int) -> None:
        if self.distinct is not None:
            self.distinct.add(array)
        if self.forced in ("text", "image") or array.null_count == len(array):
            return
        values = array.drop_null()
        # A failed cast costs as much as a full one, so text columns skip them: a first value
        # that is not a number already means this batch is not all numbers.
        if _NUMBER_RE.match(str(values[0])):
            self.all_int = self.all_int and _casts(values, pa.int64())
            if self.all_int or _casts(values, pa.float64()):
                self._saw_number(row_offset + _first_index(array.is_valid()))
                return
        is_number = pc.match_substring_regex(array, _NUMBER, ignore_case=True)
        if pc.any(is_number).as_py():
            self._saw_number(row_offset + _first_index(is_number))
        is_text = pc.invert(is_number)
        first_text = _first_index(is_text)
        if first_text >= 0 and self.first_text_row is None:
            self.first_text_row, self.first_text = row_offset + first_text, str(array[first_text])
        self.all_bool = self.all_bool and pc.all(pc.is_in(pc.utf8_lower(values), value_set=_BOOL_WORDS)).as_py()

    def _saw_number(self, row: int) -> None:
        if self.first_number_row is None:
            self.first_number_row = row

    def arrow_type(self, path: Path) -> pa.DataType:
        if self.forced in ("text", "image"):
            return pa.string()
        has_number, has_text = self.first_number_row is not None, self.first_text_row is not None
        if has_number and has_text and self.forced != "categorical":
            number_row, text_row = (self.first_number_row or 0) + 1, (self.first_text_row or 0) + 1
            raise DataError(
                f"{path}: column {self.name!r} mixes numbers (data row {number_row})"
                f" and text (data row {text_row}: {self.first_text!r}) - clean the"
                " column, add the marker to datasource.csv_null_values, or list the column in"
                " force_stypes.text"
            )
        if has_text:
            return pa.bool_() if self.all_bool and not has_number else pa.string()
        if has_number:
            return pa.int64() if self.all_int else pa.float64()
        return pa.string()


def infer_csv(
    layout: CsvLayout, section: DatasourceSection, *, visible: list[str], forced: dict[str, Stype]
) -> tuple[list[ColumnSchema], int, dict[str, pa.DataType]]:
    """One streaming pass: the columns' schema, the row count, and the arrow type of each column."""
    kinds = {
        name: _ColumnKind(name=name, forced=forced.get(name), distinct=_tracker(forced.get(name), section))
        for name in visible
    }
    rows = 0
    for batch in clean_batches(layout, section, visible):
        for name, column in zip(visible, batch.columns, strict=True):
            kinds[name].add(column, row_offset=rows)
        rows += batch.num_rows
    columns: list[ColumnSchema] = []
    types: dict[str, pa.DataType] = {}
    for name in visible:
        kind = kinds[name]
        arrow_type = types[name] = kind.arrow_type(layout.path)
        if kind.forced == "continuous" and not (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)):
            raise DataError(
                f"{layout.path}: column {name!r} is forced continuous but holds text"
                f" (data row {(kind.first_text_row or 0) + 1}: {kind.first_text!r})"
                " - remove it from force_stypes.continuous or clean the column"
            )
        columns.append(decide(name, arrow_type, forced=kind.forced, distinct=_typed(kind.distinct, arrow_type)))
    return columns, rows, types


# Distinct raw strings can outnumber typed values ("1", "01", "1.0"; "true", "True"), so
# raw values are tracked with this much slack and the limit is applied after conversion.
_RAW_SLACK = 4


def _tracker(forced: Stype | None, section: DatasourceSection) -> DistinctValues | None:
    if forced in ("text", "image", "continuous"):
        return None
    limit = MAX_FORCED_CATEGORIES if forced == "categorical" else section.categorical_max_unique
    return DistinctValues(limit=limit * _RAW_SLACK)


def _typed(distinct: DistinctValues | None, arrow_type: pa.DataType) -> DistinctValues | None:
    """The distinct strings seen, converted to the column's final type ("1" and "1.0" merge)."""
    if distinct is None:
        return None
    limit = distinct.limit // _RAW_SLACK
    if distinct.values is None:
        return DistinctValues(limit=limit, values=None)
    typed = set(pc.unique(to_type(pa.array(list(distinct.values), type=pa.string()), arrow_type)).to_pylist())
    return DistinctValues(limit=limit, values=typed if len(typed) <= limit else None)


def to_type(array: pa.Array, arrow_type: pa.DataType) -> pa.Array:
    """Cleaned strings to the column's chosen type (raises pyarrow's ArrowInvalid if one does not fit)."""
    if pa.types.is_string(arrow_type):
        return array
    if pa.types.is_boolean(arrow_type):
        return pc.cast(pc.utf8_lower(array), arrow_type)
    return pc.cast(array, arrow_type)


def _casts(values: pa.Array, arrow_type: pa.DataType) -> bool:
    try:
        pc.cast(values, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _first_index(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def csv_error(exc: Exception, *, path: Path, section: DatasourceSection, n_columns: int | None) -> DataError:
    """pyarrow's CSV failure as one line that names the file, the problem and the fix."""
    text = str(exc)
    if isinstance(exc, UnicodeDecodeError) or "invalid UTF8" in text:
        return DataError(
            f"{path}: not valid {section.csv_encoding} text - set datasource.csv_encoding"
            ' (for example "latin-1") or re-encode the file as UTF-8'
        )
    if "Empty CSV file" in text:
        return DataError(f"{path}: the file is empty - point datasource.path at a table with rows")
    if "Expected" in text and "columns, got" in text:
        where = _ragged_line(path, section, n_columns) if n_columns is not None else None
        if where is not None:
            line, fields = where
            return DataError(
                f"{path}: line {line} has {fields} fields, expected {n_columns} - fix that row"
                " (or set datasource.csv_delimiter if the file uses another separator)"
            )
    return DataError(f"{path}: cannot parse as CSV: {text.splitlines()[0]} - check datasource.csv_* settings")


def _ragged_line(path: Path, section: DatasourceSection, n_columns: int) -> tuple[int, int] | None:
    """Line number and field count of the first row with the wrong number of fields (error path only)."""
    with open(path, encoding=section.csv_encoding, errors="replace", newline="") as handle:
        for _ in range(section.csv_skip_rows):
            handle.readline()
        rows = csv.reader(handle, delimiter=section.csv_delimiter)
        for row in rows:
            if row and len(row) != n_columns and not (section.csv_has_header and rows.line_num == 1):
                return section.csv_skip_rows + rows.line_num, len(row)
    return None

