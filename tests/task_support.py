"""Cohort entries for the tasks tests build: ``entries`` for ``build_task(cohort=...)``, ``cohort_of`` for
``submit_task(task, cohort_of(task))``. A key id not given is a placeholder: only a secure round checks it."""

from __future__ import annotations

from collections.abc import Mapping

from pod_agent.protocol import CohortEntry, TaskPayload, cohort_tree

_PLACEHOLDER_KEY_ID = "0" * 64
_BUILT: dict[str, list[CohortEntry]] = {}


def entries(
    pods: list[str],
    schema_hash: str | None = None,
    *,
    schema_hashes: Mapping[str, str] | None = None,
    key_ids: Mapping[str, str] | None = None,
) -> list[CohortEntry]:
    """Each pod with ``schema_hashes[pod]`` (else ``schema_hash``) and ``key_ids[pod]`` (else a placeholder)."""
    out = [
        CohortEntry(
            pod=pod,
            schema_hash=(schema_hashes or {}).get(pod) or schema_hash or "0" * 64,
            key_id=(key_ids or {}).get(pod, _PLACEHOLDER_KEY_ID),
        )
        for pod in pods
    ]
    return remember(out)


def remember(cohort: list[CohortEntry]) -> list[CohortEntry]:
    """``cohort``, kept so that ``cohort_of`` finds it by the root of a task built from it."""
    _BUILT[cohort_tree(cohort).commitment.root] = cohort
    return cohort


def cohort_of(task: TaskPayload) -> list[CohortEntry]:
    """The entries a task built here from ``entries`` commits to."""
    return _BUILT[task.cohort.root]


def pods_of(task: TaskPayload) -> list[str]:
    """The pods of a task built here from ``entries``, sorted."""
    return sorted(e.pod for e in cohort_of(task))
