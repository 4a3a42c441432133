"""Task submissions as a modeller sends them to the hub: the signed envelope beside its cohort entries."""

from __future__ import annotations

import json
from typing import Any

from pod_agent.modeller.tasks import build_task
from pod_agent.protocol import (
    CohortEntry,
    CohortProof,
    IdentityKey,
    TaskPayload,
    TaskSubmission,
    canonical_json,
    check_inclusion,
    sign_envelope,
)

# The schema hash conftest's registrations give every pod.
SCHEMA_HASH = "a" * 64


def entries(pods: list[str]) -> list[CohortEntry]:
    return [CohortEntry(pod=p, schema_hash=SCHEMA_HASH, key_id="0" * 64) for p in pods]


def submission(payload: TaskPayload, key: IdentityKey, pods: list[str]) -> bytes:
    """``payload`` signed by ``key``, submitted with the entries of ``pods``."""
    return canonical_json(TaskSubmission(envelope=sign_envelope(payload, key), cohort=entries(pods)))


def task_submission(modeller: IdentityKey, pods: list[str]) -> bytes:
    """A schema-stats task for ``pods``, signed by ``modeller``, as ``POST /v1/tasks`` takes it."""
    payload = build_task(modeller_id=modeller.key_id, cohort=entries(pods), kind="schema-stats")
    return submission(payload, modeller, pods)


async def federation(hub: Any, n: int) -> tuple[IdentityKey, dict[str, IdentityKey]]:
    """A modeller and ``n`` pods (pod-00, pod-01, ...) registered with ``hub`` (conftest's fixture)."""
    modeller = IdentityKey.generate()
    body = {"name": "m", "public_key": modeller.public.to_b64()}
    assert (await hub.caller(modeller).call("POST", "/v1/modellers/register", body))[0] == 200
    pods = {f"pod-{i:02d}": IdentityKey.generate() for i in range(n)}
    for name, key in pods.items():
        assert (await hub.caller(key).call("POST", "/v1/pods/register", hub.pod_registration(key, name)))[0] == 200
    return modeller, pods


def keyed_submission(modeller: IdentityKey, pods: dict[str, IdentityKey]) -> tuple[TaskPayload, bytes]:
    """A schema-stats task for ``pods`` with their real key ids in its cohort, and its submission."""
    cohort = [CohortEntry(pod=name, schema_hash=SCHEMA_HASH, key_id=key.key_id) for name, key in pods.items()]
    task = build_task(modeller_id=modeller.key_id, cohort=cohort, kind="schema-stats")
    return task, canonical_json(TaskSubmission(envelope=sign_envelope(task, modeller), cohort=cohort))


def checked_delivery(delivery: dict[str, Any], pod: str) -> CohortProof:
    """The delivery's proof, checked against the signed task's root as a pod's verifier does."""
    payload = TaskPayload.model_validate(json.loads(delivery["envelope"])["payload"])
    proof = CohortProof.model_validate(delivery["proof"])
    assert proof.entry.pod == pod
    check_inclusion(payload.cohort, proof)
    return proof
