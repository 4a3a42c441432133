"""A cohort of pods with fixed round keys, so that statistical checks are deterministic."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from pod_agent.protocol.messages import Participant, SecAggParams
from pod_agent.secagg import ProtectedUpdate, RoundKeyPair, aggregate_masked, protect_update

TASK_A = "3f1c2a4e-1b2c-4d5e-8f90-a1b2c3d4e5f6"
TASK_B = "9e8d7c6b-5a49-4382-9170-fedcba987654"


def fixed_key(seed: str) -> RoundKeyPair:
    return RoundKeyPair.from_private_bytes(hashlib.sha256(seed.encode()).digest())


@dataclass(frozen=True)
class Cohort:
    names: tuple[str, ...]
    keys: dict[str, RoundKeyPair]

    def participants(self) -> list[Participant]:
        return [
            Participant(pod=name, key_id=hashlib.sha256(name.encode()).hexdigest(),
                        round_public_key=self.keys[name].public_b64)
            for name in self.names
        ]

    def params(self, **overrides: object) -> SecAggParams:
        fields: dict[str, object] = {
            "prime_q": 2**40, "precision": 2**20, "num_workers": len(self.names),
            "participants": self.participants(),
        }
        fields.update(overrides)
        return SecAggParams.model_validate(fields)

    def protect_all(
        self,
        updates: Mapping[str, Mapping[str, np.ndarray]],
        params: SecAggParams,
        *,
        rows: Mapping[str, int] | None = None,
        task_id: str = TASK_A,
        returns: Literal["update", "weights"] = "update",
    ) -> dict[str, ProtectedUpdate]:
        return {
            name: protect_update(updates[name], params=params, task_id=task_id, me=name,
                                 my_round_key=self.keys[name], n_rows=(rows or {}).get(name, 1), returns=returns)
            for name in self.names
        }

    def aggregate(
        self, protected: Mapping[str, ProtectedUpdate], params: SecAggParams
    ) -> dict[str, npt.NDArray[np.floating]]:
        layout = next(iter(protected.values())).layout
        return aggregate_masked([p.vector for p in protected.values()], layout=layout, params=params).mean


def make_cohort(n: int, tag: str = "") -> Cohort:
    names = tuple(f"pod-{i:02d}" for i in range(n))
    return Cohort(names, {name: fixed_key(tag + name) for name in names})
