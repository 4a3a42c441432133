"""A pod's table in encoded terms: each tabular column as the numbers a task's input is made of.

Owns how one column of a record batch becomes what ``task_input.py`` builds a task's rows from,
whatever the selection: a continuous column its float64 values (NaN where missing), a categorical
column, cast to string as the schema's categories are, its index among the schema's categories
(-1: missing or not listed) and its hashed bucket (``HASHED_BUCKETS`` of sha256 of the value; -1:
missing). ``RawColumns`` computes them from a datasource record batch when asked; ``ColumnStore``
computes them once for every categorical and continuous column and keeps them, so that preparing a
new selection is only the split, the training rows' moments, a gather and a write, not a read and an
encoding of the table (``prepare_task_input`` takes it as ``columns``).

The store is an Arrow IPC file, ``<key>.arrow`` under its root (0700, under the pod's state dir,
beside the prepared-input cache: it holds the table's rows, so it is the agent's alone, written 0400,
and never linked or mounted into a task's sandbox), read memory-mapped. ``key`` is the same
identity the input cache keys on (``Datasource.identity``: path, inode, size and mtime of each data
file; the datasource section; the schema's hash) plus ``STORE_VERSION``, so a changed data file
makes a new key: ``table()`` builds the store again (and removes the old one) when the files are
no longer those it was built from, and a restarted agent reuses a store of the same key. Its record
batches are the datasource's own (``READ_BATCH_ROWS``), so a preparation from the store sums and
writes batch by batch exactly as one from the datasource and its file is the same, byte for byte.
Continuous values stay float64, as the datasource's path computes moments and standardises them: a
float32 copy would change any value that needs more than 24 bits of mantissa.

A column that cannot be encoded (a "continuous" column that does not cast to float) is left out of
the store, and a selection naming it is prepared from the datasource, which raises the error that
names it. A store that cannot be built (the table unreadable, the disk full, or the store over the
size it may take: 8 bytes a cell) is not retried until the files change: ``table()`` returns None and
tasks are prepared from the datasource.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pod_agent.errors import DataError
from pod_agent.protocol import canonical_json

if TYPE_CHECKING:
    from pod_agent.data.datasource import Datasource, FileIdentity
    from pod_agent.data.schema import Schema

_log = logging.getLogger(__name__)

# Fixed width per column for hashed categories: above the schema's default
# categorical_max_unique (50), so collisions stay rare for columns that are categorical at all.
HASHED_BUCKETS = 64
# Rows per record batch read from the datasource, by task preparation and by the store alike (see above).
READ_BATCH_ROWS = 65536
# What the store file holds and how (see above); part of its key, bumped when that changes.
STORE_VERSION = 1
_METADATA_KEY = b"pod_agent.column_store"
_TABULAR_STYPES = ("categorical", "continuous")
_CELL_BYTES = 8  # a continuous value as float64; a categorical one's index and bucket as int32 each
# Field names in the store: a column's float values, its category index, its hashed bucket.
_FLOATS, _INDEX, _BUCKET = "f:", "i:", "h:"


class EncodedBatch(Protocol):
    """One record batch's columns in encoded terms (see the module docstring)."""

    @property
    def num_rows(self) -> int: ...

    def floats(self, name: str) -> np.ndarray:
        """A continuous column's values as float64, NaN where missing."""
        ...

    def category(self, name: str) -> np.ndarray:
        """A categorical column's index among the schema's categories, -1 where missing or not listed."""
        ...

    def bucket(self, name: str) -> np.ndarray:
        """A categorical column's hashed bucket in [0, HASHED_BUCKETS), -1 where missing."""
        ...


class RawColumns:
    """A datasource record batch, its columns encoded when asked; ``indexes`` maps a categorical column's
    categories to their index."""

    def __init__(self, batch: pa.RecordBatch, indexes: Mapping[str, Mapping[str, int]]) -> None:
        self.batch, self._indexes = batch, indexes

    @property
    def num_rows(self) -> int:
        return int(self.batch.num_rows)

    def floats(self, name: str) -> np.ndarray:
        return as_float(self.batch.column(name))

    def category(self, name: str) -> np.ndarray:
        return _slot_indices(self.batch.column(name), self._indexes[name].get)

    def bucket(self, name: str) -> np.ndarray:
        return _slot_indices(self.batch.column(name), _hashed_bucket)


def category_indexes(schema: Schema) -> dict[str, dict[str, int]]:
    """Each categorical column's categories and their index, as ``RawColumns`` needs them."""
    return {
        c.name: {value: i for i, value in enumerate(c.categories or [])}
        for c in schema.columns if c.stype == "categorical"
    }


def as_float(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A continuous column's values as float64, NaN where missing; DataError where they are not numbers."""
    try:
        floats = pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"task input: a continuous column holds non-numeric values ({column.type}); force it to categorical"
        ) from exc
    return np.asarray(floats.to_numpy(zero_copy_only=False), dtype=np.float64)


def _slot_indices(column: pa.Array | pa.ChunkedArray, slot_of: Callable[[str], int | None]) -> np.ndarray:
    """Slot per row: map each distinct value (cast to string) once, then gather (fast for low cardinality).

    A missing value, or one ``slot_of`` gives None, takes -1.
    """
    as_text = pc.cast(column, pa.string())
    if isinstance(as_text, pa.ChunkedArray):
        as_text = as_text.combine_chunks()
    encoded = pc.dictionary_encode(as_text)
    slots = [slot_of(v) for v in encoded.dictionary.to_pylist()]
    lookup = np.array([-1 if s is None else s for s in slots] + [-1], dtype=np.int64)
    codes = np.asarray(encoded.indices.fill_null(len(lookup) - 1).to_numpy(zero_copy_only=False))
    indices: np.ndarray = lookup[codes]
    return indices


def _hashed_bucket(value: str) -> int:
    return int.from_bytes(hashlib.sha256(value.encode("utf-8")).digest()[:8], "big") % HASHED_BUCKETS


class _StoredColumns:
    """A record batch of the store: the encoded columns read in place from the memory map."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self._batch = batch

    @property
    def num_rows(self) -> int:
        return int(self._batch.num_rows)

    def floats(self, name: str) -> np.ndarray:
        return self._column(_FLOATS + name)

    def category(self, name: str) -> np.ndarray:
        return self._column(_INDEX + name)

    def bucket(self, name: str) -> np.ndarray:
        return self._column(_BUCKET + name)

    def _column(self, field: str) -> np.ndarray:
        return np.asarray(self._batch.column(field).to_numpy())


@dataclass(frozen=True)
class EncodedTable:
    """The store as built for one key: which columns it holds and its record batches."""

    key: str
    columns: frozenset[str]
    _batches: tuple[_StoredColumns, ...]

    def batches(self) -> Iterator[EncodedBatch]:
        """The table's record batches, in the datasource's order and sizes (empty ones left out)."""
        return iter(self._batches)


class ColumnStore:
    """The encoded table of a pod's datasource, kept under ``root`` (see the module docstring); a table whose
    store would take more than ``max_bytes`` (8 bytes a cell) is not stored, and tasks read it as before."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        # The start-up build and the tasks' look-ups: one at a time, so that a task arriving during a build
        # waits for it rather than building a second store.
        self._lock = threading.Lock()
        self._table: EncodedTable | None = None
        self._failed: str | None = None  # the key whose build failed (not retried until the files change)
        self._stopping = threading.Event()

    def close(self) -> None:
        """Stop a build in progress at its next record batch (the agent is stopping: a large table's build
        would hold up its exit); ``table()`` then returns None."""
        self._stopping.set()

    def table(self, ds: Datasource, schema: Schema, *, files: FileIdentity | None = None) -> EncodedTable | None:
        """The encoded table of ``ds`` as its files are now (``files``: their ``ds.identity()`` if the caller has
        it): the one held, else the one kept under this key, else built now; None where it cannot be built
        (logged once per key)."""
        key = store_key(ds, schema, files=files)
        with self._lock:
            if self._table is not None and self._table.key == key:
                return self._table
            if self._failed == key:
                return None
            self._table = None
            try:
                self._table = self._open(key) or self._build(key, ds, schema)
            except Exception as exc:  # noqa: BLE001 - the store only saves work: whatever fails, tasks read the table
                self._failed = key
                _log.warning(
                    "column store of %s could not be built (%s: %s); tasks read the datasource instead",
                    ds.path, type(exc).__name__, exc,
                )
            return self._table

    def _open(self, key: str) -> EncodedTable | None:
        """The store kept under ``key``, if there is one and it reads as one; else None (an unreadable one removed)."""
        path = self.root / f"{key}.arrow"
        if not path.is_file():
            return None
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            described = json.loads((reader.schema.metadata or {})[_METADATA_KEY])
            if described["version"] != STORE_VERSION or described["key"] != key:
                raise ValueError(f"the store describes itself as {described}")
            columns = frozenset(described["columns"])
            batches = tuple(_StoredColumns(reader.get_batch(i)) for i in range(reader.num_record_batches))
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            _log.warning("column store %s is unreadable (%s); building it again", path.name[:16], exc)
            path.unlink(missing_ok=True)
            return None
        return EncodedTable(key, columns, batches)

    def _build(self, key: str, ds: Datasource, schema: Schema) -> EncodedTable:
        """Encode every tabular column of ``ds`` into ``<key>.arrow`` (written aside, then renamed into place)
        and open it. Whatever else is under the root goes first: other keys' stores (of files since changed),
        a build a crash cut short."""
        if self.root.is_dir():
            for other in self.root.iterdir():
                if other.is_file():
                    other.unlink(missing_ok=True)
        stypes = {c.name: c.stype for c in schema.columns if c.stype in _TABULAR_STYPES}
        if not stypes:
            return EncodedTable(key, frozenset(), ())  # images or text alone: nothing to store, nothing to read
        size = schema.row_count * len(stypes) * _CELL_BYTES
        if size > self.max_bytes:
            raise DataError(f"its {size} bytes would be over the {self.max_bytes} it may take")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # it holds encoded rows of the table: the agent's alone
        indexes = category_indexes(schema)
        fd, staging = tempfile.mkstemp(prefix=".new-", suffix=".arrow", dir=self.root)
        os.close(fd)
        try:
            columns = _write_store(Path(staging), key, ds, stypes, indexes, stopping=self._stopping)
            os.chmod(staging, 0o400)  # nobody writes a store once it exists, the agent included
            os.replace(staging, self.root / f"{key}.arrow")
        finally:
            Path(staging).unlink(missing_ok=True)
        _log.info("column store of %s built: %d of %d tabular columns", ds.path, len(columns), len(stypes))
        table = self._open(key)
        if table is None:
            raise DataError(f"column store {key[:16]} was written but does not read back; check the disk")
        return table


def _write_store(
    path: Path, key: str, ds: Datasource, stypes: Mapping[str, str], indexes: Mapping[str, Mapping[str, int]], *,
    stopping: threading.Event,
) -> list[str]:
    """Write every column of ``stypes`` that encodes, batch by batch; return their names. A column that fails
    to encode in some batch is left out and the file written again without it; ``stopping`` set ends it."""
    names = list(stypes)
    while True:
        fields: list[tuple[str, pa.DataType]] = []
        for name in names:
            fields += [(_FLOATS + name, pa.float64())] if stypes[name] == "continuous" else [
                (_INDEX + name, pa.int32()), (_BUCKET + name, pa.int32())
            ]
        described = {"version": STORE_VERSION, "key": key, "columns": names}
        arrow_schema = pa.schema(fields, metadata={_METADATA_KEY: json.dumps(described).encode()})
        try:
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, arrow_schema) as writer:
                for batch in ds.batches(columns=names, batch_rows=READ_BATCH_ROWS):
                    if stopping.is_set():
                        raise DataError("the agent is stopping")
                    if batch.num_rows:
                        writer.write_batch(_encoded_batch(RawColumns(batch, indexes), names, stypes, arrow_schema))
            return names
        except _Unencodable as exc:
            names.remove(exc.column)


class _Unencodable(Exception):
    """A column of the store's build that does not encode (internal: the build leaves it out)."""

    def __init__(self, column: str) -> None:
        self.column = column
        super().__init__(column)


def _encoded_batch(
    raw: RawColumns, names: list[str], stypes: Mapping[str, str], arrow_schema: pa.Schema
) -> pa.RecordBatch:
    arrays: list[pa.Array] = []
    for name in names:
        try:
            if stypes[name] == "continuous":
                arrays.append(pa.array(raw.floats(name)))
            else:
                arrays += [pa.array(raw.category(name).astype(np.int32)), pa.array(raw.bucket(name).astype(np.int32))]
        except (DataError, pa.ArrowException) as exc:
            raise _Unencodable(name) from exc
    return pa.record_batch(arrays, schema=arrow_schema)


def store_key(ds: Datasource, schema: Schema, *, files: FileIdentity | None = None) -> str:
    """sha256 of everything the store depends on: the data files' identity (``files``, else read now), how they
    are read, the schema."""
    described = {
        "datasource": ds.section.model_dump(mode="json"),
        "schema": schema.hash(),
        "files": ds.identity() if files is None else files,
        "version": STORE_VERSION,
    }
    return hashlib.sha256(canonical_json(described)).hexdigest()
