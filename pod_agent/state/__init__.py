"""Durable state of the pod: tasks and their life cycle, seen nonces, the result outbox (SQLite)."""

from pod_agent.state.db import PodState
from pod_agent.state.records import (
    LEGAL_TRANSITIONS,
    AlreadyReleased,
    AlreadySeen,
    IllegalTransition,
    NonceStore,
    OutboxEntry,
    TaskRecord,
    TaskStatus,
    Verdict,
)

__all__ = [
    "LEGAL_TRANSITIONS",
    "AlreadyReleased",
    "AlreadySeen",
    "IllegalTransition",
    "NonceStore",
    "OutboxEntry",
    "PodState",
    "TaskRecord",
    "TaskStatus",
    "Verdict",
]
