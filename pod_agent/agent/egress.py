"""What the hub may learn about a task while it runs and when it ends, rebuilt by the agent.

Owns the closed egress vocabulary: nothing the sandbox produces is passed through.

- **Metrics**: names from ``METRIC_VOCABULARY`` only (``loss``, ``accuracy``, ``auc``,
  ``f1``, ``precision``, ``recall``, ``mse``, ``mae``, ``r2``, bare or with a
  ``train_``/``val_``/``test_`` prefix; Lightning's ``_epoch`` suffix and the aliases
  ``acc``/``auroc`` are read as those names); every other name stays home. Each value is
  clamped to its metric's natural range and rounded there (``report_value``): a score in
  [0, 1] and r2 in [-1, 1] to ``metric_digits`` decimals; a loss, mse or mae to
  ``metric_digits`` significant digits within [10^-3, 10^3], and 0 below. So a value
  carries at most about 16 bits whatever the sandbox packs into it (a float32 carries 32,
  and a free power of ten another 8). At most ``max_metrics`` leave, in vocabulary
  order, so the sandbox chooses neither names nor order.
- **Progress**: the sandbox's step only, turned into ``PROGRESS_BUCKETS`` tenths of the
  task's own step count that are reported in order and never skipped; stage, epoch, step
  and fraction are all computed by the agent. The sandbox decides only how far it got and
  when (timing is outside this module). No loss: a pod's running loss is a per-pod value
  the sandbox writes, and it would leave unaggregated. Rate limiting is ``progress.py``.

The floor's numbers come from ``policy.PrivacyFloor``; failure codes are
``policy.failure_code_for``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pod_agent.protocol import ProgressEvent

_BASES = ("loss", "accuracy", "auc", "f1", "precision", "recall", "mse", "mae", "r2")
_PREFIXES = ("", "train_", "val_", "test_")
METRIC_VOCABULARY = tuple(prefix + base for prefix in _PREFIXES for base in _BASES)
_ORDER = {name: index for index, name in enumerate(METRIC_VOCABULARY)}
_ALIASES = {"acc": "accuracy", "auroc": "auc"}
# Lightning logs ``name_epoch`` (kept, read as ``name``) and ``name_step`` (one batch: dropped)
# for a metric logged with on_step and on_epoch.
_EPOCH_SUFFIX, _STEP_SUFFIX = "_epoch", "_step"
# Scores in [0, 1] and r2 in [-1, 1] are rounded to decimals; the error metrics to significant digits
# in [_ERROR_FLOOR, _ERROR_CEILING] (honest losses of a learning model live there; 0 below the floor).
_SCORES = frozenset({"accuracy", "auc", "f1", "precision", "recall"})
_ERROR_FLOOR, _ERROR_CEILING = 1e-3, 1e3
PROGRESS_BUCKETS = 10


def vocabulary_name(name: str) -> str | None:
    """The vocabulary name ``name`` stands for, or None when it may not leave the pod."""
    if name.endswith(_STEP_SUFFIX):
        return None
    name = name.removesuffix(_EPOCH_SUFFIX)
    prefix = next((p for p in _PREFIXES[1:] if name.startswith(p)), "")
    base = name.removeprefix(prefix)
    canonical = prefix + _ALIASES.get(base, base)
    return canonical if canonical in _ORDER else None


def round_significant(value: float, digits: int) -> float:
    """``value`` to ``digits`` significant digits (through its decimal text, so the result is exact)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits - 1}e}")


def report_value(name: str, value: float, digits: int) -> float:
    """``value`` of vocabulary metric ``name`` clamped to its natural range and rounded there."""
    base = name.split("_", 1)[1] if "_" in name else name
    if base in _SCORES:
        return round(min(max(value, 0.0), 1.0), digits)
    if base == "r2":
        return round(min(max(value, -1.0), 1.0), digits)
    clamped = min(max(value, 0.0), _ERROR_CEILING)
    return 0.0 if clamped < _ERROR_FLOOR else min(round_significant(clamped, digits), _ERROR_CEILING)


def reported_metrics(metrics: Mapping[str, float], *, digits: int, max_metrics: int) -> dict[str, float]:
    """The metrics that may leave: vocabulary names, clamped and rounded, at most ``max_metrics`` in
    vocabulary order.

    When two sandbox names map to one vocabulary name (``val_acc`` and ``val_accuracy``),
    the one that sorts first keeps it: a fixed rule, not the sandbox's order.
    """
    kept: dict[str, float] = {}
    for raw_name in sorted(metrics):
        name = vocabulary_name(raw_name)
        value = metrics[raw_name]
        if name is None or name in kept or not math.isfinite(value):
            continue
        kept[name] = report_value(name, float(value), digits)
    ordered = sorted(kept, key=_ORDER.__getitem__)[:max_metrics]
    return {name: kept[name] for name in ordered}


class WorkerProgressLike(Protocol):
    """The typed progress a worker reports (``training.wall.WorkerProgress``); only its step is read."""

    @property
    def step(self) -> int | None: ...


@dataclass
class ProgressRebuilder:
    """Turns one train task's worker progress into the events the hub may see (see the module docstring)."""

    task_id: str
    total_steps: int  # the task's effective steps, counted by the agent on the prepared input
    steps_per_epoch: int
    _reported: int = field(default=0, init=False)  # buckets already reported

    def rebuild(self, progress: WorkerProgressLike) -> list[ProgressEvent]:
        """The events to send for ``progress``: every bucket it completes, in order; none for a step out of bounds."""
        step = progress.step
        if self.total_steps < 1 or step is None or not 0 <= step <= self.total_steps:
            return []
        reached = step * PROGRESS_BUCKETS // self.total_steps
        events = []
        while self._reported < reached:
            self._reported += 1
            at = self._reported * self.total_steps // PROGRESS_BUCKETS
            events.append(ProgressEvent(
                task_id=self.task_id, stage="training", epoch=max(at - 1, 0) // self.steps_per_epoch, step=at,
                fraction=self._reported / PROGRESS_BUCKETS,
            ))
        return events
