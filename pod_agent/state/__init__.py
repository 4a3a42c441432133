"""Durable state of the pod: tasks and their life cycle, seen nonces, the result outbox, the privacy
ledger, the model review queue, SCAFFOLD control variates (SQLite); the audit export."""

from pod_agent.state.audit import ExportBroken, ExportSummary, export_lines, verify_export
from pod_agent.state.db import PodState
from pod_agent.state.records import (
    LEGAL_TRANSITIONS,
    AlreadyReleased,
    AlreadySeen,
    ApprovedModel,
    AuditRow,
    IllegalTransition,
    LedgerEntry,
    NonceStore,
    OutboxEntry,
    Reservation,
    ReviewHold,
    ReviewNotPending,
    ReviewRecord,
    TaskRecord,
    TaskStatus,
    Verdict,
)

__all__ = [
    "LEGAL_TRANSITIONS",
    "AlreadyReleased",
    "AlreadySeen",
    "ApprovedModel",
    "AuditRow",
    "ExportBroken",
    "ExportSummary",
    "IllegalTransition",
    "LedgerEntry",
    "NonceStore",
    "OutboxEntry",
    "PodState",
    "Reservation",
    "ReviewHold",
    "ReviewNotPending",
    "ReviewRecord",
    "TaskRecord",
    "TaskStatus",
    "Verdict",
    "export_lines",
    "verify_export",
]
