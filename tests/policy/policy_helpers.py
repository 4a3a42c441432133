"""Builders shared by the policy tests: a policy with two modellers, real signed tasks, a pod under test."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from pod_agent.config.settings import AllowedModel, ModellerPolicy, PeerPin, PrivacySection, SecuritySection
from pod_agent.errors import TaskRefused
from pod_agent.policy import TaskVerifier, TrustedPeers, VerifiedTask
from pod_agent.protocol import (
    CohortEntry,
    CohortProof,
    CohortTree,
    IdentityKey,
    cohort_tree,
    envelope_bytes,
    sign_envelope,
    source_sha256,
)
from pod_agent.protocol.messages import (
    DataSelection,
    Hyperparameters,
    ModelRef,
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
    """Secure-aggregation parameters for ``pods`` with a per-value bound of 1.0 (under the default ceiling)."""
    fields: dict[str, Any] = {"prime_q": 2 * 2**16 * len(pods), "precision": 2**16, "num_workers": len(pods)}
    return SecAggParams(**(fields | overrides))


# Every cohort make_task committed to, by root: the hub's part (each pod's proof) in these tests.
_TREES: dict[str, CohortTree] = {}


def cohort_of(pods: list[str], *, schema_hash: str = SCHEMA) -> CohortTree:
    """The tree of ``pods``' entries: this pod's with ``schema_hash``, the others' with SCHEMA."""
    tree = cohort_tree([
        CohortEntry(pod=p, schema_hash=schema_hash if p == POD else SCHEMA, key_id=key_of(p).key_id) for p in pods
    ])
    _TREES[tree.commitment.root] = tree
    return tree


def proof_for(raw: bytes, pod: str = POD) -> CohortProof:
    """The proof the hub would deliver with ``raw`` to ``pod`` (to the first pod when ``pod`` is not in it; a
    one-pod cohort's when ``raw`` names no cohort make_task built: it is refused before the proof counts)."""
    try:
        tree = _TREES[json.loads(raw)["payload"]["cohort"]["root"]]
    except (ValueError, KeyError, TypeError, RecursionError):
        tree = cohort_of([pod])
    return tree.proof(pod if pod in tree.pods else tree.pods[0])


def verifier_for(
    security: SecuritySection, privacy_section: PrivacySection, nonces: Any, *, row_count: int = ROW_COUNT
) -> TaskVerifier:
    return TaskVerifier(security=security, privacy=privacy_section, pod_name=POD, schema_hash=SCHEMA,
                        row_count=row_count, nonces=nonces)


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
    pods = overrides.pop("pods", [POD, "pod-b", "pod-c"])
    schema_hash = overrides.pop("schema_hash", SCHEMA)
    kind = overrides.get("kind", "train")
    fields: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "modeller_id": key.key_id,
        "cohort": cohort_of(pods, schema_hash=schema_hash).commitment,
        "weights": WEIGHTS if kind == "train" else None,
        "secagg": cohort(pods) if kind == "train" and len(set(pods)) == len(pods) else None,
        "issued_at": NOW - 10,
        "expires_at": NOW + 3600,
        "nonce": uuid.uuid4().hex,
        "kind": "train",
        "model": ModelRef(style="module", name="vetted", class_name="Net", source=SOURCE, sha256=source_sha256(SOURCE)),
        "hyperparameters": Hyperparameters(epochs=2),
        "data": DataSelection(target="income"),
    }
    fields.update(overrides)
    return TaskPayload(**fields)


def signed(payload: TaskPayload, key: IdentityKey) -> bytes:
    return envelope_bytes(sign_envelope(payload, key))


@dataclass
class Pod:
    verifier: TaskVerifier
    state: PodState

    def refusal(self, raw: bytes, *, now: int = NOW, proof: CohortProof | None = None) -> TaskRefused:
        """The refusal of ``raw`` delivered with ``proof`` (default: this pod's, as an honest hub sends it)."""
        with pytest.raises(TaskRefused) as info:
            self.verifier.verify(raw, proof=proof or proof_for(raw), now=now)
        return info.value

    def accept(self, raw: bytes, *, now: int = NOW) -> VerifiedTask:
        return self.verifier.verify(raw, proof=proof_for(raw), now=now)


