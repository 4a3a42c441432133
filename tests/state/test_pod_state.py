"""The pod's SQLite state: life cycle, queue, seen nonces, outbox, and opening it safely."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pod_agent.errors import StateError
from pod_agent.state import (
    LEGAL_TRANSITIONS,
    AlreadyReleased,
    AlreadySeen,
    IllegalTransition,
    PodState,
    ReviewHold,
    TaskStatus,
    Verdict,
)
from pod_agent.state.db import SCHEMA_VERSION


@pytest.fixture
def state(tmp_path: Path) -> Iterator[PodState]:
    with PodState.open(tmp_path / "state" / "state.sqlite") as opened:
        yield opened


def _verdict(n: int, *, accepted: bool = True, now: int = 100, keep_until: int = 1000) -> Verdict:
    return Verdict(task_id=f"task-{n}", nonce=f"nonce-{n}", modeller_id="m" * 64, kind="train",
                   envelope_json='{"payload":{}}', accepted=accepted, reason=None if accepted else "not_targeted",
                   keep_until=keep_until, now=now)


def _status(state: PodState, n: int) -> TaskStatus:
    record = state.get_task(f"task-{n}")
    assert record is not None
    return record.status


def test_open_creates_a_private_wal_database(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.sqlite"
    with PodState.open(path) as state:
        state.record_verdict(_verdict(1))
        for suffix in ("", "-wal", "-shm"):
            assert Path(f"{path}{suffix}").stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with PodState.open(path) as state:
        state.record_verdict(_verdict(1))
    with PodState.open(path) as state:
        assert _status(state, 1) is TaskStatus.ACCEPTED
        with pytest.raises(AlreadySeen):
            state.ensure_unseen(task_id="task-1", nonce="fresh")


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="not a usable SQLite file"):
        PodState.open(path)


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="schema version 99"):
        PodState.open(path)


def test_a_version_1_database_gains_the_releases_table_and_keeps_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with PodState.open(path) as state:
        state.record_verdict(_verdict(1))
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TABLE releases; DROP TABLE dp_ledger; DROP TABLE reviews; DROP TABLE approved_models; "
        "DROP TABLE task_output; DROP TABLE task_egress"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with PodState.open(path) as state:
        assert _status(state, 1) is TaskStatus.ACCEPTED
        state.record_release("ab" * 32, task_id="task-1", now=5)
        assert state.released("ab" * 32) == "task-1"


def test_a_starting_point_is_released_once_whichever_task_asks(state: PodState) -> None:
    start = "cd" * 32
    assert state.released(start) is None
    state.record_release(start, task_id="task-1", now=5)
    for task_id in ("task-2", "task-1"):
        with pytest.raises(AlreadyReleased, match="already released by task task-1"):
            state.record_release(start, task_id=task_id, now=6)
    state.record_release("ef" * 32, task_id="task-2", now=7)
    assert state.released(start) == "task-1"


def test_verdict_records_task_and_nonce_together(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    state.record_verdict(_verdict(2, accepted=False))
    assert _status(state, 1) is TaskStatus.ACCEPTED
    refused = state.get_task("task-2")
    assert refused is not None and (refused.status, refused.reason) == (TaskStatus.REFUSED, "not_targeted")
    with pytest.raises(AlreadySeen):
        state.ensure_unseen(task_id="task-9", nonce="nonce-1")
    with pytest.raises(AlreadySeen):
        state.ensure_unseen(task_id="task-2", nonce="nonce-9")
    state.ensure_unseen(task_id="task-9", nonce="nonce-9")


def test_second_verdict_for_a_seen_task_or_nonce_changes_nothing(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    clash = Verdict(task_id="task-2", nonce="nonce-1", modeller_id="m", kind="train", envelope_json="{}",
                    accepted=True, reason=None, keep_until=1000, now=100)
    with pytest.raises(AlreadySeen, match="seen before"):
        state.record_verdict(clash)
    assert state.get_task("task-2") is None  # the task row was rolled back with the seen row


def test_purged_nonces_are_forgotten_but_known_task_ids_stay_replays(state: PodState) -> None:
    state.record_verdict(_verdict(1, keep_until=500))
    state.record_verdict(_verdict(2, keep_until=5000))
    assert state.purge_seen(now=1000) == 1
    state.ensure_unseen(task_id="task-9", nonce="nonce-1")  # nonce forgotten after expiry
    with pytest.raises(AlreadySeen):
        state.ensure_unseen(task_id="task-1", nonce="other")  # the task row still knows the id
    with pytest.raises(AlreadySeen):
        state.ensure_unseen(task_id="task-9", nonce="nonce-2")


def test_queue_hands_out_accepted_tasks_oldest_first(state: PodState) -> None:
    for n, now in [(1, 30), (2, 10), (3, 20)]:
        state.record_verdict(_verdict(n, now=now))
    state.record_verdict(_verdict(4, accepted=False, now=5))
    order = [state.claim_next(now=40) for _ in range(4)]
    assert [r.task_id if r else None for r in order] == ["task-2", "task-3", "task-1", None]
    assert all(_status(state, n) is TaskStatus.RUNNING for n in (1, 2, 3))


@pytest.mark.parametrize(("start", "end"), list(itertools.product(TaskStatus, TaskStatus)),
                         ids=lambda s: s.value)
def test_only_legal_transitions_are_allowed(state: PodState, start: TaskStatus, end: TaskStatus) -> None:
    paths = {
        TaskStatus.PENDING_REVIEW: [],
        TaskStatus.ACCEPTED: [],
        TaskStatus.REFUSED: [],
        TaskStatus.RUNNING: [TaskStatus.RUNNING],
        TaskStatus.DONE: [TaskStatus.RUNNING, TaskStatus.DONE],
        TaskStatus.FAILED: [TaskStatus.FAILED],
        TaskStatus.DELIVERED: [TaskStatus.FAILED, TaskStatus.DELIVERED],
    }
    verdict = _verdict(1, accepted=start is not TaskStatus.REFUSED)
    if start is TaskStatus.PENDING_REVIEW:
        verdict = replace(verdict, review=ReviewHold(model_name="net", model_sha256="ab" * 32, model_text="x = 1\n"))
    state.record_verdict(verdict)
    for step in paths[start]:
        state.transition("task-1", step, now=101)
    if end in LEGAL_TRANSITIONS[start]:
        assert state.transition("task-1", end, now=102).status is end
        assert _status(state, 1) is end
    else:
        with pytest.raises(IllegalTransition, match=f"cannot go from {start.value} to {end.value}"):
            state.transition("task-1", end, now=102)
        assert _status(state, 1) is start


def test_transition_of_an_unknown_task_is_an_error(state: PodState) -> None:
    with pytest.raises(StateError, match="task-x is not in the state database"):
        state.transition("task-x", TaskStatus.RUNNING, now=1)


def test_history_lists_every_status_change(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    state.claim_next(now=101)
    state.finish("task-1", status="failed", result_json="{}", reason="timeout", now=102)
    assert state.history("task-1") == [
        (None, "accepted", None, 100), ("accepted", "running", None, 101), ("running", "failed", "timeout", 102)]


def test_finished_result_waits_in_the_outbox_until_delivered(state: PodState, tmp_path: Path) -> None:
    state.record_verdict(_verdict(1))
    state.claim_next(now=101)
    blob = tmp_path / "blob.safetensors"
    state.finish("task-1", status="done", result_json='{"signed":1}', blob_path=blob, now=102)
    assert _status(state, 1) is TaskStatus.DONE
    [entry] = state.pending_results()
    assert (entry.task_id, entry.result_json, entry.blob_path, entry.attempts) == ("task-1", '{"signed":1}', blob, 0)
    state.note_attempt("task-1", now=103)
    assert state.pending_results()[0].attempts == 1
    assert state.outbox_depth() == 1
    removed = state.mark_delivered("task-1", now=104)
    assert removed is not None and removed.blob_path == blob
    assert state.mark_delivered("task-1", now=105) is None  # a repeated ack is harmless
    assert _status(state, 1) is TaskStatus.DELIVERED
    assert state.outbox_depth() == 0


def test_refused_task_queues_its_signed_refusal(state: PodState) -> None:
    state.record_verdict(_verdict(1, accepted=False))
    state.finish("task-1", status="refused", result_json='{"refusal":1}', now=101)
    assert [e.task_id for e in state.pending_results()] == ["task-1"]
    state.mark_delivered("task-1", now=102)
    assert _status(state, 1) is TaskStatus.DELIVERED


def test_a_task_gets_one_result(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    state.claim_next(now=101)
    state.finish("task-1", status="done", result_json="{}", now=102)
    with pytest.raises(IllegalTransition):
        state.finish("task-1", status="failed", result_json="{}", now=103)
    assert [e.result_json for e in state.pending_results()] == ["{}"]


def test_accepted_task_cannot_be_finished_as_refused(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    with pytest.raises(StateError, match="not refused"):
        state.finish("task-1", status="refused", result_json="{}", now=101)


def test_delivery_without_a_result_is_an_error(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    with pytest.raises(StateError, match="no result in the outbox"):
        state.mark_delivered("task-1", now=101)


def test_running_tasks_are_requeued_after_a_restart(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    state.record_verdict(_verdict(2))
    state.claim_next(now=101)
    assert state.requeue_running(now=200) == ["task-1"]
    claimed = state.claim_next(now=201)
    assert claimed is not None and claimed.task_id == "task-1" and claimed.reason == "interrupted"


def test_counts_cover_every_status(state: PodState) -> None:
    state.record_verdict(_verdict(1))
    state.record_verdict(_verdict(2, accepted=False))
    counts = state.counts()
    assert set(counts) == set(TaskStatus)
    assert (counts[TaskStatus.ACCEPTED], counts[TaskStatus.REFUSED], counts[TaskStatus.DONE]) == (1, 1, 0)


def test_calls_from_many_threads_are_serialised(state: PodState) -> None:
    errors: list[BaseException] = []

    def work(base: int) -> None:
        try:
            for n in range(base, base + 25):
                state.record_verdict(_verdict(n))
                state.claim_next(now=101)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 100,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert state.counts()[TaskStatus.RUNNING] == 100
