"""The pod's own terms in local training, applied by the engine whatever the model's code does.

Owns ``LocalCorrection``, a Lightning callback that, after each backward pass and before the optimiser
steps, adds to the gradient of every parameter the optimiser steps:

- FedProx's proximal gradient ``mu * (w - w_start)``, the gradient of ``mu / 2 * ||w - w_start||^2``
  (``w_start``: the weights the task started from, captured when fitting starts);
- SCAFFOLD's correction ``c - c_i`` (the agent writes it into the task's input, ``control.py``); a model
  that steps with anything but SGD fails the task (``bad_request``): the control variates are option II's,
  which assume SGD steps.

It acts on gradients, not on the loss a model's ``training_step`` returns, so a model that never mentions
either still gets them, and the step is the one the loss plus the term would give for any gradient-based
optimiser (under gradient accumulation Lightning calls the hook once per step, on the accumulated gradient).
Which task asks for what is ``local_correction``'s reading of the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pod_agent.errors import TrainingError
from pod_agent.protocol import TaskPayload
from pod_agent.training.control import CORRECTION_FILE_NAME


class LocalCorrection(pl.Callback):
    """Adds ``mu * (w - w_start) + correction[name]`` to each stepped parameter's gradient."""

    def __init__(self, *, mu: float | None, correction: Mapping[str, torch.Tensor]) -> None:
        self.mu = mu or 0.0
        self.correction = dict(correction)
        self._start: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = dict(pl_module.named_parameters())
        # The correction covers every exchanged tensor (the agent checked them against the pinned weights);
        # buffers have no gradient, so only the parameters' entries apply.
        wrong = sorted(n for n, c in self.correction.items() if n in params and c.shape != params[n].shape)
        if wrong:
            raise TrainingError("bad_request", f"the SCAFFOLD correction's shapes differ from the parameters' {wrong}")
        self._names = {id(p): name for name, p in params.items()}
        self._start = {name: p.detach().clone() for name, p in params.items()} if self.mu else {}
        self.correction = {
            n: c.to(params[n].device, params[n].dtype) for n, c in self.correction.items() if n in params
        }

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Option II reads (x - y_i) / (K lr) as the mean gradient, which holds for SGD steps only: an adaptive
        # optimiser's steps are normalised, the correction then outweighs every gradient and training diverges.
        others = sorted({type(o).__name__ for o in trainer.optimizers if not isinstance(o, torch.optim.SGD)})
        if self.correction and others:
            raise TrainingError(
                "bad_request", f"SCAFFOLD needs the model to step with torch.optim.SGD, not {', '.join(others)}"
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    name = self._names.get(id(p))
                    if name is None or not p.requires_grad:
                        continue
                    extra = self._extra(name, p)
                    if extra is None:
                        continue
                    if p.grad is None:
                        p.grad = extra.clone()
                    else:
                        p.grad.add_(extra)

    def _extra(self, name: str, p: torch.Tensor) -> torch.Tensor | None:
        terms: list[torch.Tensor] = []
        if self.mu:
            terms.append(self.mu * (p.detach() - self._start[name]))
        if name in self.correction:
            terms.append(self.correction[name])
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def local_correction(task: TaskPayload, input_dir: Path) -> list[Any]:
    """The callback ``task`` asks for (FedProx's mu, SCAFFOLD's correction file), or none."""
    if task.proximal_mu is None and task.scaffold is None:
        return []
    correction: dict[str, torch.Tensor] = {}
    if task.scaffold is not None:
        path = input_dir / CORRECTION_FILE_NAME
        try:
            correction = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise TrainingError("bad_request", f"a SCAFFOLD task's correction is unreadable: {exc}") from exc
    return [LocalCorrection(mu=task.proximal_mu, correction=correction)]
