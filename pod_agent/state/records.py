"""Records of the pod's durable state: task statuses and their legal transitions, rows, verdicts.

Owns the task life cycle. The SQLite store that keeps these is ``db.py``.

    pending_review --(approved)--> accepted
       |
       +--(rejected, or expired while waiting)--> refused
    accepted --> running --> done ----> delivered
       |           |  ^                    ^
       |           |  +-- (requeue after a restart)
       |           +----> failed ----------+
       +-----------------> failed          |
    refused ----------------------------(refusal result delivered)

A task the owner must review first (``security.review``, ``pod_agent.policy.review``) is
stored ``pending_review`` with a row in the review queue (``reviews.py``); the decision moves it.

There is no stored "received" status: the verifier writes its verdict (accepted or
refused) in the same transaction that records the task id and nonce as seen, so a
crash can never leave a task half-admitted, and nothing is stored for a message
whose signature did not verify (a forged message cannot occupy a task id).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pod_agent.errors import StateError
from pod_agent.protocol import Envelope, TaskPayload, canonical_json


class TaskStatus(str, enum.Enum):
    PENDING_REVIEW = "pending_review"  # passed policy, its model waits for the owner's review
    ACCEPTED = "accepted"  # passed policy, waiting in the queue
    REFUSED = "refused"  # failed policy after its signature verified
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DELIVERED = "delivered"  # the hub acknowledged the result (or refusal)


LEGAL_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING_REVIEW: frozenset({TaskStatus.ACCEPTED, TaskStatus.REFUSED}),
    TaskStatus.ACCEPTED: frozenset({TaskStatus.RUNNING, TaskStatus.FAILED}),
    TaskStatus.RUNNING: frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.ACCEPTED}),
    TaskStatus.REFUSED: frozenset({TaskStatus.DELIVERED}),
    TaskStatus.DONE: frozenset({TaskStatus.DELIVERED}),
    TaskStatus.FAILED: frozenset({TaskStatus.DELIVERED}),
    TaskStatus.DELIVERED: frozenset(),
}


class AlreadySeen(StateError):
    """A task id or nonce was seen before: the message is a replay."""

    def __init__(self, task_id: str, nonce: str) -> None:
        self.task_id, self.nonce = task_id, nonce
        super().__init__(f"task {task_id} (nonce {nonce[:16]}) was seen before: a replay is never run twice")


class AlreadyReleased(StateError):
    """This pod already released a secure-aggregation update trained from these starting weights."""

    def __init__(self, starting_point: str, task_id: str) -> None:
        self.starting_point, self.task_id = starting_point, task_id
        super().__init__(
            f"an update trained from starting point {starting_point[:16]} was already released by task {task_id}: "
            "a pod contributes once per starting weights, so that no two sums differ by its update alone"
        )


class ReviewNotPending(StateError):
    """A review decision for a task that is not waiting for one."""

    def __init__(self, task_id: str, why: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} {why}: `pod-agent review list` shows the tasks waiting for a decision")


class IllegalTransition(StateError):
    """A task status change the life cycle does not allow."""

    def __init__(self, task_id: str, current: TaskStatus, wanted: TaskStatus) -> None:
        self.task_id, self.current, self.wanted = task_id, current, wanted
        allowed = ", ".join(sorted(s.value for s in LEGAL_TRANSITIONS[current])) or "nothing"
        super().__init__(
            f"task {task_id} cannot go from {current.value} to {wanted.value}; "
            f"from {current.value} it may go to {allowed}"
        )


@dataclass(frozen=True)
class Verdict:
    """What the verifier decided about a task whose signature verified; stored atomically with its nonce."""

    task_id: str
    nonce: str
    modeller_id: str
    kind: str
    envelope_json: str  # the canonical envelope JSON as received
    accepted: bool
    reason: str | None  # the refusal code when not accepted
    keep_until: int  # Unix s after which the nonce may be forgotten (expires_at + allowed clock skew)
    now: int
    review: ReviewHold | None = None  # an accepted task held for the owner's review of its model


ReviewDecision = Literal["approved", "rejected", "expired"]
# The refusal codes of a review's end (pod_agent.policy.RefusalCode holds the same words).
REVIEW_REJECTED = "review_rejected"
REVIEW_EXPIRED = "expired"


@dataclass(frozen=True)
class ReviewHold:
    """The model an accepted task waits on: it stays pending_review until approved, rejected or keep_until."""

    model_name: str
    model_sha256: str
    model_text: str  # the source, or the spec as canonical JSON, as the reviewer reads it


@dataclass(frozen=True)
class ReviewRecord:
    """One task in the review queue and, once made, the owner's decision."""

    task_id: str
    modeller_id: str
    model_name: str
    model_sha256: str
    model_text: str
    expires_at: int  # the task's expires_at + allowed clock skew: past it, the task is refused as expired
    created_at: int
    decision: ReviewDecision | None
    decided_by: str | None
    decided_at: int | None


@dataclass(frozen=True)
class ApprovedModel:
    """A model the owner approved for one modeller key: the state's allow-list entry."""

    modeller_id: str
    model_name: str
    model_sha256: str
    model_text: str
    approved_by: str
    approved_at: int


# (modeller's events, dataset's events, the task's new events) -> None, or raise TaskRefused.
BudgetAdmission = Callable[[Sequence[str], Sequence[str], Sequence[str]], None]
LedgerStatus = Literal["reserved", "charged", "refunded"]


@dataclass(frozen=True)
class Reservation:
    """Privacy-ledger events an accepted task will release, reserved in its verdict's transaction.

    ``admit`` is given the modeller's and the dataset's reserved and charged events (as stored JSON)
    and the task's own; it raises TaskRefused to turn the verdict into a refusal with its code.
    """

    dataset: str  # the datasource's schema hash
    round: int
    events: tuple[str, ...]  # JSON, as pod_agent.policy.budget writes them
    admit: BudgetAdmission
    # Every key id the modeller signs with: its budget counts the events of them all, so that a
    # second key is not a second budget. Empty: the task's signer only.
    modeller_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class LedgerEntry:
    """One release in the privacy ledger: reserved at acceptance, then charged or refunded."""

    task_id: str
    round: int
    modeller_id: str
    dataset: str
    event_json: str
    status: LedgerStatus
    created_at: int
    updated_at: int


class NonceStore(Protocol):
    """What ``pod_agent.policy.TaskVerifier`` needs from the state: replay checks, verdicts, approved models."""

    def ensure_unseen(self, *, task_id: str, nonce: str) -> None: ...

    def record_verdict(self, verdict: Verdict, reservation: Reservation | None = None) -> None: ...

    def is_approved(self, *, modeller_keys: Sequence[str], name: str, sha256: str) -> bool: ...


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    modeller_id: str
    kind: str
    status: TaskStatus
    reason: str | None
    envelope_json: str
    created_at: int
    updated_at: int

    def envelope(self) -> Envelope:
        return Envelope.model_validate_json(self.envelope_json)

    def payload(self) -> TaskPayload:
        """The task as admitted. Its signature was verified before it was stored; this does not re-verify."""
        return TaskPayload.model_validate_json(canonical_json(self.envelope().payload))


@dataclass(frozen=True)
class AuditRow:
    """One task as the audit export tells it: the stored task, how it ended, what its result released."""

    task: TaskRecord
    outcome: str  # the task's status, or for a delivered one the status it was delivered as
    n_rows: int  # rows the result says the task touched (0 without a result)
    # Bytes that left (or were queued to leave) the pod for it, by channel, zeros left out: "result" (the signed
    # result or refusal), "update" (its plain tensor blob), "masked" (a secure round's masked vector),
    # "round" (its signed round messages: keys, shares, signatures), "progress" (progress events).
    bytes_by_channel: Mapping[str, int]
    dp_events: tuple[str, ...]  # privacy-ledger events charged to it (JSON, as policy.budget writes them)

    @property
    def bytes_released(self) -> int:
        return sum(self.bytes_by_channel.values())


# What the agent counts with ``PodState.add_egress`` besides the result itself.
EgressChannel = Literal["masked", "round", "progress"]


def released_by(result_json: str, blob_path: Path | None) -> tuple[int, int, int]:
    """(rows touched, result bytes, blob bytes) of a result about to be queued; a result that does not
    parse (never one the agent signed) counts its bytes and no rows."""
    try:
        payload = json.loads(result_json).get("payload", {})
        n_rows = int(payload.get("n_rows", 0)) if isinstance(payload, dict) else 0
    except (ValueError, AttributeError, TypeError):
        n_rows = 0
    try:
        blob_bytes = blob_path.stat().st_size if blob_path is not None else 0
    except OSError:
        blob_bytes = 0  # the blob is named but gone: nothing of it can leave
    return n_rows, len(result_json.encode("utf-8")), blob_bytes


@dataclass(frozen=True)
class OutboxEntry:
    """A signed result (or refusal) waiting for the hub's acknowledgement."""

    task_id: str
    result_json: str  # the signed result envelope, canonical JSON
    blob_path: Path | None  # tensor blob beside it, if any
    created_at: int
    attempts: int
    last_attempt_at: int | None
