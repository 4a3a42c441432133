"""What a model learns about the pod's prepared data: sizes, target and feature names.

Owns the typed view of the datastructure dict that ``pod_agent.data.task_input``
writes (its module docstring defines the keys and the encoding). Models read it as
``self.datastructure``; nothing here touches the data itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pod_agent.errors import TrainingError


@dataclass(frozen=True)
class Datastructure:
    """Shapes and names a model is built from (``input_size``, ``n_classes`` ...)."""

    target: str
    input_size: int
    n_classes: int
    task: Literal["classification", "regression"] = "classification"
    target_categories: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    stypes: Mapping[str, str] = field(default_factory=dict)
    categorical_encoding: str = "one-hot"
    support_columns: tuple[str, ...] = ()
    n_rows: Mapping[str, int] = field(default_factory=dict)
    # What one row of ``x`` is: "tabular" ([input_size] float32), "image" ([channels, height, width] float32
    # in [0, 1], ``image_shape``) or "tokens" ([input_size] int64 ids below ``vocab_size``, 0 = padding).
    input_kind: Literal["tabular", "image", "tokens"] = "tabular"
    image_shape: tuple[int, ...] = ()
    vocab_size: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> Datastructure:
        """Parse the dict written by ``prepare_task_input``; raises TrainingError("bad_datastructure")."""
        try:
            task = str(raw.get("task", "classification"))
            if task not in ("classification", "regression"):
                raise ValueError(f"task {task!r}")
            input_size = int(raw["input_size"])  # type: ignore[call-overload]
            n_classes = int(raw["n_classes"])  # type: ignore[call-overload]
            if input_size < 1 or n_classes < 1:
                raise ValueError(f"input_size={input_size}, n_classes={n_classes}")
            input_kind = str(raw.get("input_kind", "tabular"))
            if input_kind not in ("tabular", "image", "tokens"):
                raise ValueError(f"input_kind {input_kind!r}")
            n_rows_raw = raw.get("n_rows", {})
            stypes_raw = raw.get("stypes", {})
            if not isinstance(n_rows_raw, Mapping) or not isinstance(stypes_raw, Mapping):
                raise ValueError("n_rows and stypes must be objects")
            return cls(
                target=str(raw["target"]),
                input_size=input_size,
                n_classes=n_classes,
                task=task,  # type: ignore[arg-type]
                target_categories=tuple(str(c) for c in _list(raw, "target_categories")),
                feature_names=tuple(str(c) for c in _list(raw, "feature_names")),
                columns=tuple(str(c) for c in _list(raw, "columns")),
                stypes={str(k): str(v) for k, v in stypes_raw.items()},
                categorical_encoding=str(raw.get("categorical_encoding", "one-hot")),
                support_columns=tuple(str(c) for c in _list(raw, "support_columns")),
                n_rows={str(k): int(v) for k, v in n_rows_raw.items()},
                input_kind=input_kind,  # type: ignore[arg-type]
                image_shape=tuple(int(d) for d in _list(raw, "image_shape")),  # type: ignore[call-overload]
                vocab_size=int(str(raw.get("vocab_size", 0))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError("bad_datastructure", f"datastructure unusable: {exc}") from exc

    @classmethod
    def coerce(cls, value: Datastructure | Mapping[str, object]) -> Datastructure:
        return value if isinstance(value, Datastructure) else cls.from_dict(value)


def _list(raw: Mapping[str, object], key: str) -> list[object]:
    value = raw.get(key, [])
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a list")
    return list(value)
