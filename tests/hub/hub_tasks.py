"""Task submissions as a modeller sends them to the hub: the signed envelope beside its cohort entries."""

from __future__ import annotations

from pod_agent.modeller.tasks import build_task
from pod_agent.protocol import (
    CohortEntry,
    IdentityKey,
    TaskPayload,
    TaskSubmission,
    canonical_json,
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
