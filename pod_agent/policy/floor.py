"""The owner's privacy floor in force for one modeller, and what a task may leave behind.

Owns ``PrivacyFloor`` (the ``[privacy]`` defaults with the modeller's own ``privacy``
table laid over them) and the arithmetic the verifier and the pipeline share: the
rows a split will hold and the optimiser steps a train task will take. The verifier
checks a task against the floor before it runs (estimates from the registered row
count); the pipeline checks the exact counts once the input is prepared. Nothing a
task says can lower a value here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from pod_agent.config import ModellerPolicy, PrivacySection
from pod_agent.protocol import Hyperparameters, Split, TaskKind

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class PrivacyFloor:
    """What may leave this pod for one modeller; see pod.example.toml's ``[privacy]`` for each key."""

    require_secure_aggregation: bool
    min_pods: int
    min_batch_size: int
    min_rows: int
    max_effective_steps: int
    max_clip_bound: float
    max_clip_norm: float | None
    metric_digits: int
    max_metrics: int

    @classmethod
    def for_modeller(cls, privacy: PrivacySection, modeller: ModellerPolicy) -> PrivacyFloor:
        """``[privacy]``'s defaults, each replaced by the modeller's own value where it sets one."""
        values = {}
        for field in fields(cls):
            own = getattr(modeller.privacy, field.name)
            values[field.name] = getattr(privacy, field.name) if own is None else own
        return cls(**values)

    def describe(self) -> str:
        """One line for ``pod-agent check``."""
        return ", ".join(f"{field.name}={getattr(self, field.name)}" for field in fields(self))


def used_splits(kind: TaskKind, split: Split) -> tuple[str, ...]:
    """The splits a task reads: every split with a share of the rows (schema-stats reads none)."""
    if kind == "schema-stats":
        return ()
    return tuple(name for name in SPLIT_NAMES if getattr(split, name) > 0)


def estimated_rows(row_count: int, split: Split) -> dict[str, int]:
    """Rows each split will hold, from the table's row count (the prepared input has the exact numbers)."""
    return {name: row_count * getattr(split, name) // 100 for name in SPLIT_NAMES}


def effective_steps(hyperparameters: Hyperparameters, train_rows: int) -> int:
    """Optimiser steps of a train task: its steps, or epochs x ceil(train rows / batch size)."""
    if hyperparameters.steps is not None:
        return hyperparameters.steps
    epochs = hyperparameters.epochs or 0
    return epochs * math.ceil(train_rows / hyperparameters.batch_size)
