"""The schema of a pod's table: columns with arrow and semantic types, row count, hash, drift.

Owns the Schema and ColumnSchema models, their canonical encoding and hash, the view that is
registered with the hub (``public``), the drift check, and ``stype_reason`` (why a column got its
stype, for ``pod-agent schema``). Inferring a schema from data is ``infer.py``; reading the data is
``datasource.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pod_agent.errors import DataError, SchemaDrift

Stype = Literal["categorical", "continuous", "text", "image"]
STYPES: tuple[Stype, ...] = ("categorical", "continuous", "text", "image")


class ColumnSchema(BaseModel):
    """One column.

    ``arrow_type`` is the type of the column in the batches ``Datasource.batches`` yields
    (``str(pyarrow.DataType)``). ``categories`` is set for categorical columns only: the
    distinct non-null values cast to string with ``pyarrow.compute.cast(values, pa.string())``
    (so ``True`` is ``"true"``, 1.0 is ``"1"``), ordered by their typed value (numbers
    numerically, strings lexicographically, false before true).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    arrow_type: str
    stype: Stype
    categories: list[str] | None = None


class Schema(BaseModel):
    """All visible columns of the table (never the ignored ones) in file order, and its row count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    columns: list[ColumnSchema]
    row_count: int

    def column(self, name: str) -> ColumnSchema:
        for column in self.columns:
            if column.name == name:
                return column
        raise DataError(
            f"column {name!r} is not in the datasource schema - choose one of {self.names()}"
        )

    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def canonical(self) -> bytes:
        """What the hash covers: names, order, arrow and semantic types, category sets.

        The row count is left out on purpose: appending rows must not invalidate tasks that
        were built against this schema.
        """
        body = [column.model_dump() for column in self.columns]
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def hash(self) -> str:
        """sha256 hex of ``canonical()``: the schema hash registered with the hub and echoed in tasks."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def public(self, share_categories: bool) -> dict[str, Any]:
        """The schema as registered with the hub and handed to the sandbox.

        Category values only when the pod allows it; otherwise each categorical column
        shows only ``n_categories``. ``hash`` is over the full schema (values included):
        it is what tasks pin, and it reveals no value, though it confirms a right guess of
        every column's category set at once.
        """
        columns: list[dict[str, Any]] = []
        for column in self.columns:
            entry: dict[str, Any] = {
                "name": column.name,
                "arrow_type": column.arrow_type,
                "stype": column.stype,
            }
            if column.categories is not None:
                entry["n_categories"] = len(column.categories)
                if share_categories:
                    entry["categories"] = list(column.categories)
            columns.append(entry)
        return {"columns": columns, "row_count": self.row_count, "hash": self.hash()}

    @classmethod
    def from_public(cls, public: Mapping[str, Any]) -> Schema:
        """The schema a modeller sees at the hub, for planning a model's shapes.

        Where a pod did not share its category values, ``n_categories`` placeholders
        (``"#0"``, ``"#1"`` ...) stand in: sizes are right, values unknown, and so its
        hash is not the pod's (the registered ``hash`` is what tasks pin).
        """
        try:
            columns = [
                ColumnSchema(
                    name=entry["name"], arrow_type=entry["arrow_type"], stype=entry["stype"],
                    categories=entry.get("categories")
                    or ([f"#{i}" for i in range(int(entry["n_categories"]))] if "n_categories" in entry else None),
                )
                for entry in public["columns"]
            ]
            return cls(columns=columns, row_count=int(public["row_count"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"public schema unusable ({exc}); re-fetch it from the hub (pod-agent modeller pods)"
            ) from exc

    @staticmethod
    def public_shares_categories(public: Mapping[str, Any]) -> bool:
        """Whether ``public`` (a ``public()`` view) carries category values: the
        ``share_categories`` to plan a pod's datastructure with (``task_input.plan_datastructure``).

        ``public()`` shares all categorical columns' values or none; a view without
        categorical columns names nothing by category, so either answer plans the same.
        """
        try:
            return all("categories" in entry for entry in public["columns"] if "n_categories" in entry)
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"public schema unusable ({exc}); re-fetch it from the hub (pod-agent modeller pods)"
            ) from exc


def stype_reason(column: ColumnSchema, *, forced: Stype | None, max_unique: int) -> str:
    """Why inference gave ``column`` its stype, in the owner's terms (the rule is ``infer.py``'s):
    what ``pod-agent schema`` prints so a surprising stype can be forced the other way."""
    if forced is not None:
        return f"forced (force_stypes.{forced})"
    arrow = column.arrow_type
    kind = "integers" if arrow.startswith(("int", "uint")) else "strings" if "string" in arrow else "values"
    if column.stype == "categorical":
        if arrow == "bool":
            return "boolean"
        return f"{len(column.categories or ())} distinct {kind} (<= categorical_max_unique {max_unique})"
    if column.stype == "continuous" and kind == "integers":
        return f"integers, over categorical_max_unique {max_unique} distinct"
    if column.stype == "text":
        return f"strings, over categorical_max_unique {max_unique} distinct"
    return f"{arrow} values"


def check_drift(stored: Schema, current: Schema) -> None:
    """Raise SchemaDrift if ``current`` lost, gained or changed columns relative to ``stored``.

    A column counts as changed when its arrow type, semantic type or category set differs;
    a different row count alone is not drift.
    """
    before = {column.name: column for column in stored.columns}
    now = {column.name: column for column in current.columns}
    added = [name for name in now if name not in before]
    dropped = [name for name in before if name not in now]
    changed = [name for name in before if name in now and before[name] != now[name]]
    if added or dropped or changed:
        raise SchemaDrift(added=added, dropped=dropped, changed=changed)
