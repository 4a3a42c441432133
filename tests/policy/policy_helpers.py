"""Builders shared by the policy tests: a policy with two modellers, real signed tasks, a pod under test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from pod_agent.config.settings import AllowedModel, ModellerPolicy, PeerPin, PrivacySection, SecuritySection
from pod_agent.errors import TaskRefused
from pod_agent.policy import TaskVerifier, TrustedPeers, VerifiedTask
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope, source_sha256
from pod_agent.protocol.messages import (
    DataSelection,
    Hyperparameters,
    ModelRef,
    Participant,
    SecAggParams,
    TaskPayload,
    WeightsRef,
)
from pod_agent.state import PodState

NOW = 1_700_000_000
POD = "pod-a"
SCHEMA = "5c" * 32
SOURCE = "import torch\n\nclass Net(torch.nn.Module):\n    pass\n"
# The table's registered row count: the default split (80/10/10) gives 8000/1000/1000 rows.
ROW_COUNT = 10_000
# The pod under test and the peers its owner pinned: the default train task's cohort.
POD_KEY = IdentityKey.generate()
PEER_KEYS = {"pod-b": IdentityKey.generate(), "pod-c": IdentityKey.generate(), "pod-d": IdentityKey.generate()}
WEIGHTS = WeightsRef(blob_id="w", sha256="77" * 32, size_bytes=1024)


def pinned_peers(names: list[str] | None = None) -> list[PeerPin]:
    """``[[privacy.peers]]`` entries for ``names`` (default: every peer in PEER_KEYS)."""
    return [PeerPin(name=name, public_key=PEER_KEYS[name].public.to_b64()) for name in (names or sorted(PEER_KEYS))]


def privacy(**overrides: Any) -> PrivacySection:
    """The default floor with every peer pinned, and ``overrides``."""
    return PrivacySection(**({"peers": pinned_peers()} | overrides))


def trusted(privacy_section: PrivacySection) -> TrustedPeers:
    return TrustedPeers.from_settings(privacy_section, own_name=POD, own_key=POD_KEY.public)


def key_of(pod: str) -> IdentityKey:
    return POD_KEY if pod == POD else PEER_KEYS.get(pod) or IdentityKey.generate()


def cohort(pods: list[str], **overrides: Any) -> SecAggParams:
    """Secure-aggregation parameters over ``pods`` with a per-value bound of 1.0 (under the default ceiling)."""
    fields: dict[str, Any] = {
        "prime_q": 2 * 2**16 * len(pods), "precision": 2**16, "num_workers": len(pods),
        "participants": [Participant(pod=p, key_id=key_of(p).key_id) for p in pods],
    }
    return SecAggParams(**(fields | overrides))


def verifier_for(
    security: SecuritySection, privacy_section: PrivacySection, nonces: Any, *, row_count: int = ROW_COUNT
) -> TaskVerifier:
    return TaskVerifier(security=security, privacy=privacy_section, pod_name=POD, schema_hash=SCHEMA,
                        row_count=row_count, peers=trusted(privacy_section), nonces=nonces)


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
    """A task that passes the default floor: a train task starts from pinned weights, securely aggregated
    over its pods (default: this pod and two pinned peers)."""
    pods = overrides.get("pods", [POD, "pod-b", "pod-c"])
    kind = overrides.get("kind", "train")
    fields: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "modeller_id": key.key_id,
        "pods": pods,
        "weights": WEIGHTS if kind == "train" else None,
        "secagg": cohort(pods) if kind == "train" and len(set(pods)) == len(pods) else None,
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


