"""Semantic types from a streaming pass: distinct-value tracking and the stype decision.

Owns the rule that turns an arrow type, the distinct values seen and ``force_stypes`` into a
ColumnSchema: floats and temporals are continuous; bools are categorical; integers and
strings are categorical up to ``categorical_max_unique`` distinct values, else continuous
(integers) or text (strings); image only where forced. Reading the values is the job of
``csvsource.py`` and ``parquetsource.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pod_agent.data.schema import ColumnSchema, Stype
from pod_agent.errors import DataError

# A forced categorical column is tracked up to this many categories: beyond it the category
# list (sent with the schema and used to one-hot encode) stops being a sensible encoding.
MAX_FORCED_CATEGORIES = 10_000


@dataclass
class DistinctValues:
    """Distinct non-null values of one column, tracked until there are more than ``limit``."""

    limit: int
    values: set[Any] | None = field(default_factory=set)

    def add(self, array: pa.Array) -> None:
        if self.values is None:
            return
        if pa.types.is_dictionary(array.type):
            # Only the dictionary entries that rows use: a dictionary page may hold more.
            array = array.dictionary.take(pc.unique(array.indices.drop_null()))
        self.values.update(pc.unique(array.drop_null()).to_pylist())
        if len(self.values) > self.limit:
            self.values = None

    @property
    def overflowed(self) -> bool:
        return self.values is None


def categories_of(values: pa.Array) -> list[str]:
    """Distinct non-null values ordered by typed value, rendered as pyarrow casts them to string."""
    distinct = pc.unique(values.drop_null())
    ordered = pc.take(distinct, pc.sort_indices(distinct))
    return [str(v) for v in pc.cast(ordered, pa.string()).to_pylist()]


def tracks_distinct(arrow_type: pa.DataType) -> bool:
    """Whether an unforced column of this type may turn out categorical."""
    return bool(
        pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type) or _is_string(arrow_type)
    )


def decide(
    name: str,
    arrow_type: pa.DataType,
    *,
    forced: Stype | None,
    distinct: DistinctValues | None,
) -> ColumnSchema:
    """The ColumnSchema of a column whose final arrow type and distinct values are known."""
    type_text = str(arrow_type)
    if forced in ("text", "image", "continuous"):
        return ColumnSchema(name=name, arrow_type=type_text, stype=forced)
    if pa.types.is_boolean(arrow_type) and (distinct is None or distinct.overflowed):
        # A bool is categorical whatever categorical_max_unique says (even 1).
        return ColumnSchema(name=name, arrow_type=type_text, stype="categorical", categories=["false", "true"])
    if forced == "categorical" or tracks_distinct(arrow_type):
        if distinct is not None and not distinct.overflowed and (distinct.values or forced):
            values = pa.array(list(distinct.values or ()), type=arrow_type)
            return ColumnSchema(
                name=name, arrow_type=type_text, stype="categorical", categories=categories_of(values)
            )
        if forced == "categorical":
            raise DataError(
                f"column {name!r} is forced categorical but has more than {MAX_FORCED_CATEGORIES}"
                " distinct values - remove it from force_stypes.categorical or add it to ignore_cols"
            )
        if pa.types.is_integer(arrow_type):
            return ColumnSchema(name=name, arrow_type=type_text, stype="continuous")
        return ColumnSchema(name=name, arrow_type=type_text, stype="text")
    return ColumnSchema(name=name, arrow_type=type_text, stype="continuous")


def _is_string(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))
