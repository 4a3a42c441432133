"""The compact layout of a tabular task input's rows, and their expansion to the dense vectors models see.

Owns how ``task_input.py`` stores a tabular row in ``data.arrow`` and how a reader (the sandbox's
batches in ``pod_agent.training``, benchmarks, baselines) turns rows back into the dense float32
``[rows, input_size]`` the datastructure describes. Every categorical column sets at most one slot of
its encoding (one-hot or hashed), so a row is stored as its continuous values plus one slot position
per categorical column, not as ``input_size`` floats that are mostly zeros (Adult, hashed: 8 floats and
8 int32 a row instead of 518 floats; the file is ~30x smaller and ~30x cheaper to write and to hash).

- ``x: fixed_size_list<float32>[n_continuous]``: the standardised continuous values, in column order;
- ``slots: fixed_size_list<int32>[n_categorical]``: per categorical column, the dense position of the
  slot it sets (the column's offset plus its slot), -1 where it sets none (hashed, missing value);
- ``x``'s field metadata ``pod_agent.layout``: JSON ``{"input_size": N, "continuous": [...]}``, the dense
  position of each of x's values.

Arrow cannot hold a zero-width list, so a selection with no continuous column writes one unused 0 per
row in ``x`` (``continuous`` is then empty) and one without categorical columns one slot of -1.

Expanding a row writes zeros, then x's values at their positions and 1.0 at each slot (in a file the
agent wrote no two of them share a position). The file is the agent's, but at a weak sandbox level a
worker could alter a cached one: the layout is checked when read and the slots of each record batch when
it is decoded, and anything out of place raises DataError naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from pod_agent.errors import DataError

LAYOUT_METADATA_KEY = b"pod_agent.layout"
SLOTS_COLUMN = "slots"


@dataclass(frozen=True)
class TabularLayout:
    """Where a compact row's values and slots go in the dense vector of ``input_size`` floats."""

    input_size: int
    continuous: tuple[int, ...]  # the dense position of each continuous value, in x's order

    @classmethod
    def of(cls, schema: pa.Schema) -> TabularLayout | None:
        """The layout a prepared file's Arrow schema records; None where its ``x`` is dense (images, text).

        Raises DataError when the layout is malformed: unreadable metadata, a position outside the
        vector, or column types and widths that do not match it.
        """
        metadata = (schema.field("x").metadata or {}) if "x" in schema.names else {}
        raw = metadata.get(LAYOUT_METADATA_KEY)
        if raw is None:
            return None
        try:
            described = json.loads(raw)
            input_size, continuous = described["input_size"], described["continuous"]
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"task input layout {raw[:80]!r} is unreadable ({exc!r}); prepare the input again") from exc
        if not _is_int(input_size) or input_size < 1 or not isinstance(continuous, list):
            raise DataError(f"task input layout {raw[:80]!r} needs a positive input_size and a continuous list")
        outside = [p for p in continuous if not _is_int(p) or not 0 <= p < input_size]
        if outside:
            raise DataError(
                f"task input layout places continuous values at {outside[:5]}, outside [0, {input_size}); "
                "prepare the input again"
            )
        layout = cls(input_size, tuple(continuous))
        layout._check_columns(schema)
        return layout

    def _check_columns(self, schema: pa.Schema) -> None:
        x_type = schema.field("x").type
        slots_type = schema.field(SLOTS_COLUMN).type if SLOTS_COLUMN in schema.names else None
        if not (
            pa.types.is_fixed_size_list(x_type) and x_type.value_type == pa.float32()
            and x_type.list_size == max(len(self.continuous), 1)
            and slots_type is not None and pa.types.is_fixed_size_list(slots_type)
            and slots_type.value_type == pa.int32()
        ):
            raise DataError(
                f"task input x is {x_type} and {SLOTS_COLUMN} is {slots_type}; its layout needs "
                f"fixed_size_list<float32>[{max(len(self.continuous), 1)}] and fixed_size_list<int32>"
            )

    def metadata(self) -> dict[bytes, bytes]:
        """``x``'s field metadata recording this layout."""
        described = {"input_size": self.input_size, "continuous": self.continuous}
        return {LAYOUT_METADATA_KEY: json.dumps(described).encode()}

    def arrays(self, values: np.ndarray, slots: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """The ``x`` and ``slots`` columns of rows given as values ``[rows, n_continuous]`` (float32) and
        slot positions ``[rows, n_categorical]`` (int32), padded where a width is 0 (see above)."""
        rows = len(values)
        if values.shape[1] == 0:
            values = np.zeros((rows, 1), dtype=np.float32)
        if slots.shape[1] == 0:
            slots = np.full((rows, 1), -1, dtype=np.int32)
        return (
            pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1]),
            pa.FixedSizeListArray.from_arrays(pa.array(slots.reshape(-1)), slots.shape[1]),
        )

    def rows(self, batch: pa.RecordBatch) -> CompactRows:
        """A record batch's rows, ready to expand: the continuous values read in place, the slots copied (the
        file may change under its memory map after the check here, the copy does not).

        Raises DataError when a slot lies outside the vector (-1, setting none, is the only negative).
        """
        x, column = batch.column("x"), batch.column(SLOTS_COLUMN)
        values = np.asarray(x.flatten().to_numpy(zero_copy_only=False)).reshape(len(batch), x.type.list_size)
        slots = np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.int32).reshape(len(batch), -1)
        low, high = (int(slots.min()), int(slots.max())) if slots.size else (0, 0)
        if low < -1 or high >= self.input_size:
            bad = slots[(slots < -1) | (slots >= self.input_size)]
            raise DataError(
                f"task input sets slot {int(bad[0])}, outside [0, {self.input_size}) (-1 sets none); "
                "prepare the input again"
            )
        return CompactRows(self.input_size, self._positions, values[:, : len(self.continuous)], slots, low >= 0)

    @cached_property
    def _positions(self) -> np.ndarray:
        return np.array(self.continuous, dtype=np.int64)


@dataclass(frozen=True)
class CompactRows:
    """A record batch's rows in the compact layout (``TabularLayout.rows``), expanded a few at a time."""

    input_size: int
    positions: np.ndarray  # where each continuous value goes
    values: np.ndarray  # [rows, n_continuous] float32
    slots: np.ndarray  # [rows, width] int32, each in [-1, input_size)
    sets_every_slot: bool  # no slot is -1 (one-hot always): no mask needed

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """Dense float32 ``[len(rows), input_size]`` of the rows at ``rows``: zeros, the continuous values at
        their positions, 1.0 at each slot."""
        dense = np.zeros((len(rows), self.input_size), dtype=np.float32)
        dense[:, self.positions] = self.values[rows]
        slots = self.slots[rows]
        at = slots + (np.arange(len(rows), dtype=np.int64) * self.input_size)[:, None]
        dense.reshape(-1)[at if self.sets_every_slot else at[slots >= 0]] = 1.0
        return dense


def dense_x(data: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Every row's ``x`` of a prepared file's table as a model sees it: ``[rows, input_size]`` float32 for a
    tabular file (expanded), else x's values as stored, ``[rows, width]``. For tests, benchmarks and baselines
    that read the whole table; the sandbox expands batch by batch."""
    batches = data.to_batches() if isinstance(data, pa.Table) else [data]
    layout = TabularLayout.of(data.schema)
    if layout is None:
        width = data.schema.field("x").type.list_size
        parts = [np.asarray(b.column("x").flatten().to_numpy(zero_copy_only=False)).reshape(-1, width) for b in batches]
    else:
        width = layout.input_size
        parts = [layout.rows(b).dense(np.arange(len(b))) for b in batches]
    return np.concatenate(parts) if parts else np.empty((0, width), dtype=np.float32)


def _is_int(value: object) -> bool:
    return type(value) is int  # JSON true/false load as bool, a subclass of int
