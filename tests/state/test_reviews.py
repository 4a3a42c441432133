"""The review queue: each transition of a pending task, across a restart, and the allow-list it feeds."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pod_agent.state import PodState, ReviewHold, ReviewNotPending, TaskStatus, Verdict

MODELLER = "m" * 64
SHA = "ab" * 32


def _held(n: int, *, keep_until: int = 1000, sha256: str = SHA, text: str = "x = 1\n") -> Verdict:
    return Verdict(task_id=f"task-{n}", nonce=f"nonce-{n}", modeller_id=MODELLER, kind="train",
                   envelope_json='{"payload":{}}', accepted=True, reason=None, keep_until=keep_until, now=100,
                   review=ReviewHold(model_name="net", model_sha256=sha256, model_text=text))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"


@pytest.fixture
def state(path: Path) -> Iterator[PodState]:
    with PodState.open(path) as opened:
        yield opened


def _status(state: PodState, n: int | str) -> TaskStatus:
    record = state.get_task(n if isinstance(n, str) else f"task-{n}")
    assert record is not None
    return record.status


def test_a_held_task_waits_and_is_never_claimed(state: PodState) -> None:
    state.record_verdict(_held(1))
    assert _status(state, 1) is TaskStatus.PENDING_REVIEW
    assert state.claim_next(now=101) is None
    assert [r.task_id for r in state.reviews()] == ["task-1"]


def test_approval_queues_every_task_waiting_on_that_model_and_records_who(state: PodState) -> None:
    state.record_verdict(_held(1))
    state.record_verdict(_held(2))
    state.record_verdict(_held(3, sha256="cd" * 32))
    assert state.decide_review("task-1", approve=True, by="carol", now=200) == ["task-1", "task-2"]
    assert [_status(state, n) for n in (1, 2, 3)] == [TaskStatus.ACCEPTED, TaskStatus.ACCEPTED,
                                                      TaskStatus.PENDING_REVIEW]
    review = state.review("task-1")
    assert review is not None and (review.decision, review.decided_by, review.decided_at) == ("approved", "carol", 200)
    assert state.is_approved(modeller_keys=[MODELLER], name="net", sha256=SHA)
    assert not state.is_approved(modeller_keys=["other"], name="net", sha256=SHA)
    approved = state.last_approved("net")
    assert approved is not None and approved.approved_by == "carol" and approved.model_text == "x = 1\n"
    claimed = state.claim_next(now=201)
    assert claimed is not None and claimed.task_id == "task-1"


def test_rejection_refuses_the_task_and_queues_its_refusal(state: PodState) -> None:
    state.record_verdict(_held(1))
    state.decide_review("task-1", approve=False, by="carol", now=200)
    record = state.get_task("task-1")
    assert record is not None and (record.status, record.reason) == (TaskStatus.REFUSED, "review_rejected")
    assert not state.is_approved(modeller_keys=[MODELLER], name="net", sha256=SHA)
    assert [t.task_id for t in state.unsent_review_refusals()] == ["task-1"]
    state.finish("task-1", status="refused", result_json="{}", now=201)
    assert state.unsent_review_refusals() == []


def test_a_decided_task_cannot_be_decided_again(state: PodState) -> None:
    state.record_verdict(_held(1))
    state.decide_review("task-1", approve=False, by="carol", now=200)
    with pytest.raises(ReviewNotPending, match="task-1 was already rejected by carol"):
        state.decide_review("task-1", approve=True, by="dave", now=201)
    with pytest.raises(ReviewNotPending, match="task-9 is not in the review queue"):
        state.decide_review("task-9", approve=True, by="dave", now=201)


def test_expiry_while_pending_refuses_it_as_expired(state: PodState) -> None:
    state.record_verdict(_held(1, keep_until=500))
    state.record_verdict(_held(2, keep_until=900))
    assert state.expire_reviews(now=600) == ["task-1"]
    record = state.get_task("task-1")
    assert record is not None and (record.status, record.reason) == (TaskStatus.REFUSED, "expired")
    assert _status(state, 2) is TaskStatus.PENDING_REVIEW
    with pytest.raises(ReviewNotPending, match="task-2 has expired"):
        state.decide_review("task-2", approve=True, by="carol", now=901)
    assert [t.task_id for t in state.unsent_review_refusals()] == ["task-1"]


def test_a_pending_task_survives_a_restart_and_runs_once_approved(path: Path) -> None:
    with PodState.open(path) as state:
        state.record_verdict(_held(1))
        assert state.requeue_running(now=150) == []
    with PodState.open(path) as state:
        assert _status(state, 1) is TaskStatus.PENDING_REVIEW
        state.decide_review("task-1", approve=True, by="carol", now=200)
    with PodState.open(path) as state:
        claimed = state.claim_next(now=300)
        assert claimed is not None and claimed.task_id == "task-1"


def test_a_schema_3_database_gains_the_review_queue_and_keeps_its_tasks(path: Path) -> None:
    with PodState.open(path) as state:
        state.record_verdict(Verdict(task_id="old", nonce="n-old", modeller_id=MODELLER, kind="train",
                                     envelope_json="{}", accepted=True, reason=None, keep_until=1000, now=1))
    conn = sqlite3.connect(path)
    # Back to version 3: its tasks table allowed no pending_review.
    conn.executescript("""
        DROP TABLE reviews; DROP TABLE approved_models; DROP TABLE task_output; DROP TABLE task_egress;
        CREATE TABLE tasks_v3 AS SELECT * FROM tasks; DROP TABLE tasks; ALTER TABLE tasks_v3 RENAME TO tasks;
        PRAGMA user_version = 3;
    """)
    conn.close()
    with PodState.open(path) as state:
        assert _status(state, "old") is TaskStatus.ACCEPTED
        state.record_verdict(_held(1))
        assert _status(state, 1) is TaskStatus.PENDING_REVIEW
        state.claim_next(now=2)
        assert state.history("old")[-1][1] == "running"

