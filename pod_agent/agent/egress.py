"""What the hub may learn about a task while it runs and when it ends, rebuilt by the agent.

Owns the closed egress vocabulary: nothing the sandbox produces is passed through.

- **Metrics**: names from ``METRIC_VOCABULARY`` only (``loss``, ``accuracy``, ``auc``,
  ``f1``, ``precision``, ``recall``, ``mse``, ``mae``, ``r2``, bare or with a
  ``train_``/``val_``/``test_`` prefix; Lightning's ``_epoch`` suffix and the aliases
  ``acc``/``auroc`` are read as those names); every other name stays home. Values are
  rounded to the floor's ``metric_digits`` significant digits, at most ``max_metrics``
  of them, in vocabulary order, so the sandbox chooses neither names nor order.
- **Progress**: stage (training or validating), epoch and step within the task's own
  bounds and never going back, the fraction done computed by the agent from the step,
  and a rounded loss only when the task is not securely aggregated (a pod's own loss is
  then a per-pod fact the modeller may not see). Rate limiting by time is ``progress.py``.

The floor's numbers come from ``policy.PrivacyFloor``; failure codes are
``policy.failure_code_for``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pod_agent.protocol.messages import ProgressEvent

_BASES = ("loss", "accuracy", "auc", "f1", "precision", "recall", "mse", "mae", "r2")
_PREFIXES = ("", "train_", "val_", "test_")
METRIC_VOCABULARY = tuple(prefix + base for prefix in _PREFIXES for base in _BASES)
_ORDER = {name: index for index, name in enumerate(METRIC_VOCABULARY)}
_ALIASES = {"acc": "accuracy", "auroc": "auc"}
# Lightning logs ``name_epoch`` (kept, read as ``name``) and ``name_step`` (one batch: dropped)
# for a metric logged with on_step and on_epoch.
_EPOCH_SUFFIX, _STEP_SUFFIX = "_epoch", "_step"
_SANDBOX_STAGES = frozenset({"training", "validating"})


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


def reported_metrics(metrics: Mapping[str, float], *, digits: int, max_metrics: int) -> dict[str, float]:
    """The metrics that may leave: vocabulary names, rounded, at most ``max_metrics`` in vocabulary order.

    When two sandbox names map to one vocabulary name (``val_acc`` and ``val_accuracy``),
    the one that sorts first keeps it: a fixed rule, not the sandbox's order.
    """
    kept: dict[str, float] = {}
    for raw_name in sorted(metrics):
        name = vocabulary_name(raw_name)
        value = metrics[raw_name]
        if name is None or name in kept or not math.isfinite(value):
            continue
        kept[name] = round_significant(float(value), digits)
    ordered = sorted(kept, key=_ORDER.__getitem__)[:max_metrics]
    return {name: kept[name] for name in ordered}


class WorkerProgressLike(Protocol):
    """The typed progress a worker reports (``training.wall.WorkerProgress``)."""

    @property
    def stage(self) -> str: ...
    @property
    def epoch(self) -> int | None: ...
    @property
    def step(self) -> int | None: ...
    @property
    def loss(self) -> float | None: ...


@dataclass
class ProgressRebuilder:
    """Turns one task's worker progress into the events the hub may see (see the module docstring)."""

    task_id: str
    max_steps: int  # the task's effective steps: a step beyond it is not believed
    max_epochs: int
    digits: int
    include_loss: bool
    _last_step: int = field(default=-1, init=False)

    def rebuild(self, progress: WorkerProgressLike) -> ProgressEvent | None:
        """The event to send for ``progress``, or None when it says nothing the hub may learn."""
        if progress.stage not in _SANDBOX_STAGES:
            return None
        step, epoch = progress.step, progress.epoch
        if step is None or not 0 <= step <= self.max_steps or step < self._last_step:
            return None
        if epoch is None or not 0 <= epoch < self.max_epochs:
            return None
        self._last_step = step
        loss = progress.loss
        shown_loss = (
            round_significant(loss, self.digits)
            if self.include_loss and loss is not None and math.isfinite(loss)
            else None
        )
        return ProgressEvent(
            task_id=self.task_id, stage="validating" if progress.stage == "validating" else "training",
            epoch=epoch, step=step, fraction=round(step / self.max_steps, 2) if self.max_steps else None,
            loss=shown_loss,
        )
