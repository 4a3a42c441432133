"""Builders shared by the policy tests: a policy with two modellers, real signed tasks, a pod under test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from pod_agent.config.settings import AllowedModel, ModellerPolicy, SecuritySection
from pod_agent.errors import TaskRefused
from pod_agent.policy import TaskVerifier, VerifiedTask
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope, source_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, TaskPayload
from pod_agent.state import PodState

NOW = 1_700_000_000
POD = "pod-a"
SCHEMA = "5c" * 32
SOURCE = "import torch\n\nclass Net(torch.nn.Module):\n    pass\n"


def policy_for(alice: IdentityKey, bob: IdentityKey, **overrides: Any) -> SecuritySection:
    fields: dict[str, Any] = {
        "modellers": [
            ModellerPolicy(name="alice", public_key=alice.public.to_b64(), role="super",
                           kinds=["train", "evaluate", "predict"], allow_predict=True),
            ModellerPolicy(name="bob", public_key=bob.public.to_b64(), role="general", max_epochs=5, max_steps=100),
        ],
        "allowed_models": [AllowedModel(name="vetted", sha256=source_sha256(SOURCE))],
    }
    fields.update(overrides)
    return SecuritySection(**fields)


def make_task(key: IdentityKey, **overrides: Any) -> TaskPayload:
    fields: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "modeller_id": key.key_id,
        "pods": [POD],
        "issued_at": NOW - 10,
        "expires_at": NOW + 3600,
        "nonce": uuid.uuid4().hex,
        "kind": "train",
        "model": ModelRef(style="module", name="vetted", class_name="Net", source=SOURCE, sha256=source_sha256(SOURCE)),
        "hyperparameters": Hyperparameters(epochs=2),
        "data": DataSelection(target="income"),
        "schema_hash": SCHEMA,
    }
    fields.update(overrides)
    return TaskPayload(**fields)


def signed(payload: TaskPayload, key: IdentityKey) -> bytes:
    return envelope_bytes(sign_envelope(payload, key))


@dataclass
class Pod:
    verifier: TaskVerifier
    state: PodState

    def refusal(self, raw: bytes, *, now: int = NOW) -> TaskRefused:
        with pytest.raises(TaskRefused) as info:
            self.verifier.verify(raw, now=now)
        return info.value

    def accept(self, raw: bytes, *, now: int = NOW) -> VerifiedTask:
        return self.verifier.verify(raw, now=now)


