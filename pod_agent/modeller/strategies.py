"""Federated strategies beyond plain FedAvg: how the modeller turns the pods' updates into the next global
model, and what it asks each pod's own engine to add to local training.

Owns ``Strategy`` (a frozen description), the named strategies of ``--strategy`` (``STRATEGIES``), the
server optimisers' update rules (``ServerOptimizer``), robust aggregation of plain updates (``robust_mean``)
and SCAFFOLD's server control variate. ``fedavg.py`` runs the rounds; the pods apply the FedProx term and
the SCAFFOLD correction in their training engine (``pod_agent.training.correction``) and keep their own
control variates (``pod_agent.agent.scaffold``).

Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization") act on the aggregated update
``delta`` (the cohort's mean of new - old), the same update rules and defaults as Flower's strategies:

- FedAvgM: ``v = momentum * v + delta`` (``v = delta`` in round 1), ``x += eta * v``;
- FedAdam: ``m = b1 m + (1 - b1) delta``, ``v = b2 v + (1 - b2) delta^2``,
  ``x += eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + tau)`` (Flower's bias-corrected step);
- FedYogi: ``v = v - (1 - b2) delta^2 sign(v - delta^2)``, ``x += eta * m / (sqrt(v) + tau)``;
- FedAdagrad: ``v = v + delta^2``, ``x += eta * m / (sqrt(v) + tau)``.

They need only the mean, so they work under secure aggregation. Flower's ``eta_l`` is the pods' learning
rate: here it is the plan's ``learning_rate`` unless a strategy sets ``eta_l`` (Flower's defaults, 0.1 and
0.0316, assume plain SGD on the clients; a model with its own Adam wants far less).

Robust aggregation (coordinate-wise median, trimmed mean; unweighted, as Flower's FedMedian and
FedTrimmedAvg) needs every pod's own update, which secure aggregation exists to hide: the aggregator only
ever sees the masked sum. ``Strategy.check`` refuses that combination before any task is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from pod_agent.errors import ModellerError

Weights = dict[str, np.ndarray]
Aggregation = Literal["mean", "median", "trimmed-mean"]
ServerRule = Literal["sgd", "momentum", "adam", "yogi", "adagrad"]


@dataclass(frozen=True)
class Strategy:
    """How a run aggregates and steps, and what the pods add to their local training."""

    name: str = "fedavg"
    aggregation: Aggregation = "mean"
    server: ServerRule = "sgd"
    eta: float = 1.0  # server learning rate (eta_g); 1 with "sgd" is FedAvg
    eta_l: float | None = None  # the pods' learning rate; None: the plan's learning_rate
    beta_1: float = 0.0
    beta_2: float = 0.0
    tau: float = 1e-9
    momentum: float = 0.0  # FedAvgM's server momentum
    proximal_mu: float | None = None  # FedProx: each pod's engine adds mu/2 ||w - w_global||^2
    scaffold: bool = False
    trim_beta: float = 0.2  # trimmed mean: the fraction cut at each end

    @property
    def robust(self) -> bool:
        return self.aggregation != "mean"

    def check(self, *, secure: bool) -> None:
        """Raise ModellerError for a strategy that cannot run as planned (robust aggregation when secure)."""
        if self.robust and secure:
            raise ModellerError(
                f"strategy {self.name!r} aggregates by {self.aggregation}, which needs each pod's own update; "
                "under secure aggregation the aggregator only ever sees the masked sum of the cohort's updates, "
                "so no median or trimmed mean can be taken: train with --plain (on pods whose owners set "
                "privacy.require_secure_aggregation = false) or pick a strategy that steps on the mean "
                "(fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox, scaffold)"
            )
        if self.robust and (self.server != "sgd" or self.eta != 1.0 or self.scaffold):
            raise ModellerError(f"strategy {self.name!r}: robust aggregation replaces the mean and steps with eta 1")
        if not 0 <= self.trim_beta < 0.5:
            raise ModellerError(f"trim_beta {self.trim_beta:g} must be in [0, 0.5): the fraction cut at each end")


# The strategies ``--strategy`` names, with Flower's defaults (FedProx's mu has none there: 0.1 is a common pick).
STRATEGIES: dict[str, Strategy] = {
    "fedavg": Strategy(),
    "fedavgm": Strategy(name="fedavgm", server="momentum", eta=1.0, momentum=0.0),
    "fedadam": Strategy(name="fedadam", server="adam", eta=1e-1, beta_1=0.9, beta_2=0.99, tau=1e-9),
    "fedyogi": Strategy(name="fedyogi", server="yogi", eta=1e-2, beta_1=0.9, beta_2=0.99, tau=1e-3),
    "fedadagrad": Strategy(name="fedadagrad", server="adagrad", eta=1e-1, beta_1=0.0, beta_2=0.0, tau=1e-9),
    "fedprox": Strategy(name="fedprox", proximal_mu=0.1),
    "scaffold": Strategy(name="scaffold", scaffold=True),
    "median": Strategy(name="median", aggregation="median"),
    "trimmed-mean": Strategy(name="trimmed-mean", aggregation="trimmed-mean"),
}


def strategy_named(name: str, **overrides: Any) -> Strategy:
    """The named strategy with ``overrides`` (None values keep the default); ModellerError for an unknown name."""
    base = STRATEGIES.get(name)
    if base is None:
        raise ModellerError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def robust_mean(updates: Sequence[Mapping[str, np.ndarray]], strategy: Strategy) -> Weights:
    """The coordinate-wise median or trimmed mean of the pods' plain updates (each pod counts once)."""
    out: Weights = {}
    for name in updates[0]:
        stacked = np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])
        if strategy.aggregation == "median":
            out[name] = np.median(stacked, axis=0).astype(np.float32)
            continue
        cut = int(strategy.trim_beta * len(updates))
        kept = np.sort(stacked, axis=0)[cut : len(updates) - cut]
        out[name] = kept.mean(axis=0).astype(np.float32)
    return out


class ServerOptimizer:
    """The server's step from the aggregated update, with its moments kept across rounds."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.round = 0
        self._m: Weights = {}
        self._v: Weights = {}

    def step(self, delta: Mapping[str, np.ndarray]) -> Weights:
        """The change to the global weights from the cohort's mean update ``delta`` (FedAvg: ``delta`` itself)."""
        s = self.strategy
        self.round += 1
        if s.server == "sgd" and s.eta == 1.0:
            return {name: np.asarray(d, dtype=np.float32) for name, d in delta.items()}
        return {
            name: self._direction(name, np.asarray(d, dtype=np.float64), s).astype(np.float32)
            for name, d in delta.items()
        }

    def _direction(self, name: str, d: np.ndarray, s: Strategy) -> np.ndarray:
        if s.server == "sgd":
            return s.eta * d
        if s.server == "momentum":
            if s.momentum > 0:
                d = d if self.round == 1 else s.momentum * self._m[name] + d
                self._m[name] = d
            return s.eta * d
        m = s.beta_1 * self._m.get(name, 0.0) + (1 - s.beta_1) * d
        v_old = self._v.get(name, np.zeros_like(d))
        if s.server == "adam":
            v = s.beta_2 * v_old + (1 - s.beta_2) * d * d
            eta = s.eta * np.sqrt(1 - s.beta_2 ** (self.round + 1.0)) / (1 - s.beta_1 ** (self.round + 1.0))
        elif s.server == "yogi":
            v = v_old - (1 - s.beta_2) * d * d * np.sign(v_old - d * d)
            eta = s.eta
        else:  # adagrad
            v = v_old + d * d
            eta = s.eta
        self._m[name], self._v[name] = m, v
        return np.asarray(eta * m / (np.sqrt(v) + s.tau))


class ServerControl:
    """SCAFFOLD's server control variate ``c``: zero at first, then ``c += |S|/N * mean(delta c_i)`` each
    round (the pods' control changes come back in the same vector as their weight updates)."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.c: Weights = {name: np.zeros_like(a, dtype=np.float32) for name, a in weights.items()}

    def step(self, mean_delta: Mapping[str, np.ndarray], *, share: float) -> None:
        """Apply the cohort's mean control change; ``share`` is survivors / pods planned (|S| / N)."""
        for name in self.c:
            self.c[name] = (self.c[name] + share * np.asarray(mean_delta[name], dtype=np.float32)).astype(np.float32)


__all__ = ["STRATEGIES", "ServerControl", "ServerOptimizer", "Strategy", "robust_mean", "strategy_named"]
