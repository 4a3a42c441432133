"""Building task payloads on the modeller's side: ids, nonces, validity window, pinned hashes.

Owns ``build_task`` (a TaskPayload ready to sign; its ModelRef comes from
``protocol.model_from_file``, which pins the source exactly as the pod will hash it, and its cohort
is the Merkle root of the entries ``ModellerClient.cohort`` makes, which ``submit_task`` sends beside
the envelope so the hub can hand each pod its own proof) and the
modeller's local record of each task it sent (``save_task_record``/``load_task_record``, in a
folder the CLI keeps beside the modeller key): the hub does not serve a task back, and only the
task says whether a train result's tensors are an update or weights. Signing and sending are
``client.ModellerClient``'s.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from pod_agent.errors import ModellerError
from pod_agent.protocol import (
    CohortEntry,
    DataSelection,
    DpParams,
    Hyperparameters,
    ModelRef,
    SecAggParams,
    TaskKind,
    TaskPayload,
    WeightsRef,
    cohort_tree,
)

# Long enough for a queued pod to pick the task up, short enough that a leaked envelope soon expires.
DEFAULT_TASK_LIFETIME_S = 3600


def _record_path(task_id: str, records: Path) -> Path:
    return records / f"{task_id}.json"


def save_task_record(task: TaskPayload, records: Path) -> Path:
    """Keep the task as sent in the folder ``records`` (read back by ``results``)."""
    path = _record_path(task.task_id, records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(task.model_dump_json(indent=2))
    return path


def load_task_record(task_id: str, records: Path) -> TaskPayload | None:
    """The task as this modeller sent it, or None when it was sent from elsewhere (another key's folder)."""
    path = _record_path(task_id, records)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModellerError(f"task record {path} cannot be read: {exc}") from exc
    try:
        return TaskPayload.model_validate_json(text)
    except ValueError as exc:
        raise ModellerError(f"task record {path} is not a task as submit wrote it: {exc}") from exc


def build_task(
    *,
    modeller_id: str,
    cohort: Sequence[CohortEntry],
    kind: TaskKind,
    model: ModelRef | None = None,
    data: DataSelection | None = None,
    hyperparameters: Hyperparameters | None = None,
    weights: WeightsRef | None = None,
    secagg: SecAggParams | None = None,
    dp: DpParams | None = None,
    returns: str = "update",
    evaluate_first: bool = False,
    lifetime_s: int = DEFAULT_TASK_LIFETIME_S,
    now: int | None = None,
) -> TaskPayload:
    """A fresh task (new UUID and 128-bit nonce) for ``cohort`` (committed by its Merkle root and size), valid
    from now for ``lifetime_s`` seconds."""
    if kind != "schema-stats" and (model is None or data is None):
        raise ModellerError(f"a {kind} task needs a model and a data selection (--model, --class, --target)")
    issued = int(time.time()) if now is None else now
    return TaskPayload(
        task_id=str(uuid.uuid4()),
        modeller_id=modeller_id,
        cohort=cohort_tree(cohort).commitment,
        issued_at=issued,
        expires_at=issued + lifetime_s,
        nonce=secrets.token_hex(16),
        kind=kind,
        model=model,
        hyperparameters=hyperparameters or Hyperparameters(),
        weights=weights,
        data=data,
        returns=returns,  # type: ignore[arg-type]
        evaluate_first=evaluate_first,
        secagg=secagg,
        dp=dp,
    )
