"""The state a train task started from, kept through training so it can be evaluated after it.

Owns ``evaluate_first``'s timing: the incoming weights' test metrics are measured after training, on
the state the model had before its first step, so the first step waits for no evaluation. Kept: a copy
of every state entry training may change (parameters that require grad, buffers) and a reference to
each frozen parameter, not copied, so a large frozen base costs no memory twice. A frozen parameter
changed in place through itself (its ``_version``, as autograd counts writes) fails the evaluation with
``evaluation_error`` rather than report metrics of other weights; a write through ``.data`` escapes
that count, but the metrics are the model's own computation either way. ``engine.py`` keeps and puts back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pod_agent.errors import TrainingError


@dataclass(frozen=True)
class IncomingState:
    """The model's state before training: copies of what may change, references to what may not."""

    copied: dict[str, torch.Tensor]
    frozen: dict[str, tuple[torch.Tensor, int]]

    @classmethod
    def keep(cls, model: nn.Module) -> IncomingState:
        frozen_ids = {id(p) for p in model.parameters() if not p.requires_grad}
        copied: dict[str, torch.Tensor] = {}
        frozen: dict[str, tuple[torch.Tensor, int]] = {}
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) in frozen_ids:
                frozen[name] = (tensor, tensor._version)
            else:
                copied[name] = tensor.detach().clone()
        return cls(copied=copied, frozen=frozen)

    def restore(self, model: nn.Module) -> None:
        """Put the kept state back into ``model`` (trained by now); raises TrainingError when a frozen
        parameter was changed in place, since its starting values are gone."""
        changed = [name for name, (tensor, version) in self.frozen.items() if tensor._version != version]
        if changed:
            raise TrainingError(
                "evaluation_error",
                f"frozen parameter {changed[0]!r} changed in place during training: the incoming weights "
                "can no longer be evaluated (evaluate_first)",
            )
        state = {**self.copied, **{name: tensor.detach() for name, (tensor, _v) in self.frozen.items()}}
        model.load_state_dict(state)
