"""Mini-batches of one split of a prepared ``data.arrow``, read from a memory map.

Owns turning the Arrow IPC file written by ``pod_agent.data.task_input`` into the
``((tabular, support), y)`` batches models see. Batches never cross a record batch,
so memory holds one record batch (the file stays memory-mapped): tables larger than
RAM still train. Shuffling is a seeded permutation of record batches and of rows
within each, new for every epoch: a full shuffle for tables of one record batch and a
block shuffle beyond. A ``shard``ed split under a running process group (``ranks.py``) hands
each rank its slice of every batch: the ranks see the same batches in the same order, so
their averaged gradients are the whole batch's and every rank takes the same number of steps.
Tabular rows are stored compactly (``pod_agent.data``'s ``TabularLayout``: continuous values plus one
slot per categorical column) and each mini-batch's rows alone are expanded to the dense float32
``[rows, input_size]`` models see; a malformed layout or slot is refused with ``data_invalid``.
Where ``x`` carries a row shape (``pod_agent.shape``: images ``[channels, height, width]``, text
``[max_tokens]``), batches have that shape; uint8 ``x`` (pixels) becomes float32 in [0, 1] and other
integer ``x`` (token ids) int64.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset

from pod_agent.data import ROW_SHAPE_METADATA_KEY, SPLIT_CODES, CompactRows, TabularLayout
from pod_agent.errors import DataError, TrainingError
from pod_agent.sdk import Batch


class SplitBatches(IterableDataset[Batch]):
    """Iterates the rows of ``split`` of the file at ``path`` in batches of ``batch_size``."""

    def __init__(
        self, path: Path, *, split: str, batch_size: int, shuffle: bool, seed: int, shard: bool = False
    ) -> None:
        if split not in SPLIT_CODES:
            raise TrainingError("bad_request", f"split {split!r} is not one of {list(SPLIT_CODES)}")
        self._path, self._code = path, SPLIT_CODES[split]
        self._batch_size, self._shuffle, self._seed, self._shard = batch_size, shuffle, seed, shard
        self._epoch = 0
        try:
            source = pa.memory_map(str(path), "r")
            self._reader = pa.ipc.open_file(source)
        except (OSError, pa.ArrowInvalid) as exc:
            raise TrainingError("data_invalid", f"{path.name} is not a readable Arrow IPC file: {exc}") from exc
        names = self._reader.schema.names
        if names[:3] != ["x", "y", "split"]:
            raise TrainingError("data_invalid", f"{path.name} has columns {names}, expected x, y, split")
        self._rows_per_batch = [
            int(np.count_nonzero(_split_column(self._reader.get_batch(i)) == self._code))
            for i in range(self._reader.num_record_batches)
        ]
        self.n_rows = sum(self._rows_per_batch)
        metadata = self._reader.schema.field("x").metadata or {}
        try:
            self._layout = TabularLayout.of(self._reader.schema)
            self._row_shape = tuple(int(d) for d in json.loads(metadata.get(ROW_SHAPE_METADATA_KEY, b"[-1]")))
        except DataError as exc:
            raise TrainingError("data_invalid", f"{path.name}: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise TrainingError("data_invalid", f"{path.name} has an unreadable row shape: {exc}") from exc

    def _decode(self, index: int) -> _Rows:
        """Record batch ``index``: its features, y, and the positions of this split's rows."""
        batch = self._reader.get_batch(index)
        y = np.asarray(batch.column(1).to_numpy(zero_copy_only=False))
        rows = np.flatnonzero(_split_column(batch) == self._code)
        if self._layout is not None:
            try:
                return _Rows(self._layout.rows(batch), y, rows)
            except DataError as exc:
                raise TrainingError("data_invalid", f"{self._path.name}: {exc}") from exc
        x = np.asarray(batch.column(0).flatten().to_numpy(zero_copy_only=False)).reshape(len(batch), *self._row_shape)
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.integer):
            x = x.astype(np.int64)
        return _Rows(_Stored(x), y, rows)

    def peek(self, n_rows: int) -> Batch:
        """The first ``n_rows`` rows of the split, without shuffling or advancing the epoch."""
        decoded = self._decode(next(i for i, n in enumerate(self._rows_per_batch) if n))
        return decoded.batch(decoded.rows[:n_rows])

    def __len__(self) -> int:
        return sum(math.ceil(n / self._batch_size) for n in self._rows_per_batch)

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self._seed, self._epoch])
        self._epoch += 1
        rank, ranks = (dist.get_rank(), dist.get_world_size()) if self._shard and dist.is_initialized() else (0, 1)
        order = np.arange(self._reader.num_record_batches)
        if self._shuffle:
            order = rng.permutation(order)
        for index in order:
            if self._rows_per_batch[index] == 0:
                continue
            decoded = self._decode(int(index))
            rows = rng.permutation(decoded.rows) if self._shuffle else decoded.rows
            for start in range(0, len(rows), self._batch_size):
                yield decoded.batch(_slice(rows[start : start + self._batch_size], rank, ranks))


@dataclass(frozen=True)
class _Stored:
    """A record batch's x as stored (images, text), taken row by row."""

    x: np.ndarray

    def dense(self, rows: np.ndarray) -> np.ndarray:
        taken: np.ndarray = self.x[rows]
        return taken


@dataclass(frozen=True)
class _Rows:
    """One record batch, decoded: its features (compact tabular rows, expanded per batch, or stored x), y, and
    the positions of the split's rows."""

    features: CompactRows | _Stored
    y: np.ndarray
    rows: np.ndarray

    def batch(self, rows: np.ndarray) -> Batch:
        """``rows`` as a model batch; ``support`` stays empty until there are support columns."""
        x = torch.from_numpy(self.features.dense(rows))
        return (x, torch.empty((len(rows), 0), dtype=torch.float32)), torch.from_numpy(self.y[rows])


def _slice(rows: np.ndarray, rank: int, ranks: int) -> np.ndarray:
    """Rank ``rank``'s part of one batch's rows; a batch of fewer rows than ranks goes whole to each."""
    return rows if len(rows) < ranks else np.array_split(rows, ranks)[rank]


def _split_column(batch: pa.RecordBatch) -> np.ndarray:
    return np.asarray(batch.column(2).to_numpy(zero_copy_only=False))

