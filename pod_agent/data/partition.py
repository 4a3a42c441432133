"""Non-IID partitioning of one table into several pods' tables, for the demo and tests.

Owns only the split: rows go to pods by the value of one categorical column, so the
pods differ in size and label rate the way real institutions do. Reading and
writing files stays with the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pod_agent.errors import DataError


@dataclass(frozen=True)
class Partition:
    """One pod's share: the category values it holds and its rows."""

    values: tuple[str, ...]
    table: pa.Table


def partition_by_category(table: pa.Table, *, column: str, n_parts: int) -> list[Partition]:
    """Split ``table`` into ``n_parts`` by ``column``: the n-1 most frequent values each get
    a part of their own and the last part holds every other value (and the nulls)."""
    if n_parts < 2:
        raise DataError(f"partition: n_parts={n_parts}; a split needs at least 2 parts")
    if column not in table.column_names:
        raise DataError(f"partition: column {column!r} not in the table; choose one of {table.column_names}")
    as_text = pc.cast(table[column], pa.string())
    counts = pc.value_counts(pc.drop_null(as_text)).to_pylist()
    ranked = [c["values"] for c in sorted(counts, key=lambda c: (-c["counts"], c["values"]))]
    if len(ranked) < n_parts:
        raise DataError(
            f"partition: column {column!r} has {len(ranked)} values, fewer than the {n_parts} parts asked for"
        )
    own, rest = ranked[: n_parts - 1], ranked[n_parts - 1 :]
    parts = [Partition((value,), table.filter(pc.equal(as_text, value))) for value in own]
    rest_mask = pc.or_kleene(pc.is_in(as_text, value_set=pa.array(rest)), pc.is_null(as_text))
    parts.append(Partition(tuple(rest), table.filter(pc.fill_null(rest_mask, True))))
    return parts
