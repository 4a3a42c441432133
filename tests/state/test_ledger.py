"""The privacy ledger: reserved with the verdict, charged with the result or the release, refunded on failure,
and durable across a restart and a SIGKILL between reserve and charge."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from pod_agent.errors import TaskRefused
from pod_agent.state import PodState, Reservation, TaskStatus, Verdict

EVENT = '{"mechanism": "gaussian", "noise_multiplier": 1.0}'
DATASET = "d" * 64


def _verdict(task_id: str, *, modeller: str = "m", now: int = 1) -> Verdict:
    return Verdict(task_id=task_id, nonce=f"n-{task_id}", modeller_id=modeller, kind="train", envelope_json="{}",
                   accepted=True, reason=None, keep_until=10**9, now=now)


class _Recorder:
    """An admission that records what it was shown and refuses past ``limit`` live events."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.shown: list[tuple[int, int]] = []

    def __call__(self, modeller: Sequence[str], dataset: Sequence[str], new: Sequence[str]) -> None:
        self.shown.append((len(modeller), len(dataset)))
        if len(modeller) + len(new) > self.limit:
            raise TaskRefused("privacy_budget_exhausted", "over the test's limit")

    def reservation(self) -> Reservation:
        return Reservation(dataset=DATASET, round=0, events=(EVENT,), admit=self)


def test_reserved_then_charged_when_the_result_enters_the_outbox(tmp_path: Path) -> None:
    with PodState.open(tmp_path / "s.sqlite") as state:
        state.record_verdict(_verdict("t1"), _Recorder().reservation())
        assert [(e.task_id, e.status, e.dataset) for e in state.ledger()] == [("t1", "reserved", DATASET)]
        state.claim_next(now=2)
        state.finish("t1", status="done", result_json="{}", now=3)
        assert state.ledger()[0].status == "charged"


def test_a_masked_release_charges_and_a_later_failure_does_not_refund(tmp_path: Path) -> None:
    with PodState.open(tmp_path / "s.sqlite") as state:
        state.record_verdict(_verdict("t1"), _Recorder().reservation())
        state.claim_next(now=2)
        state.record_release("w" * 64, task_id="t1", now=3)
        state.finish("t1", status="failed", result_json="{}", reason="round_timeout", now=4)
        assert state.ledger()[0].status == "charged"


def test_a_task_failed_before_any_output_is_refunded_and_no_longer_counted(tmp_path: Path) -> None:
    recorder = _Recorder()
    with PodState.open(tmp_path / "s.sqlite") as state:
        state.record_verdict(_verdict("t1"), recorder.reservation())
        state.claim_next(now=2)
        state.finish("t1", status="failed", result_json="{}", reason="model_error", now=3)
        assert state.ledger()[0].status == "refunded"
        state.record_verdict(_verdict("t2"), recorder.reservation())
    assert recorder.shown == [(0, 0), (0, 0)]


def test_a_refused_admission_stores_the_task_refused_and_reserves_nothing(tmp_path: Path) -> None:
    with PodState.open(tmp_path / "s.sqlite") as state:
        recorder = _Recorder(limit=1)
        state.record_verdict(_verdict("t1"), recorder.reservation())
        with pytest.raises(TaskRefused, match="over the test's limit"):
            state.record_verdict(_verdict("t2"), recorder.reservation())
        task = state.get_task("t2")
        assert task is not None and task.status is TaskStatus.REFUSED and task.reason == "privacy_budget_exhausted"
        assert [e.task_id for e in state.ledger()] == ["t1"]


def test_the_ledger_separates_modellers_and_binds_the_dataset(tmp_path: Path) -> None:
    recorder = _Recorder()
    with PodState.open(tmp_path / "s.sqlite") as state:
        state.record_verdict(_verdict("a1", modeller="alice"), recorder.reservation())
        state.record_verdict(_verdict("b1", modeller="bob"), recorder.reservation())
        state.record_verdict(_verdict("a2", modeller="alice"), recorder.reservation())
        assert [e.task_id for e in state.ledger(modeller_id="alice")] == ["a1", "a2"]
    assert recorder.shown == [(0, 0), (0, 1), (1, 2)]


def test_the_ledger_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with PodState.open(path) as state:
        state.record_verdict(_verdict("t1"), _Recorder().reservation())
    recorder = _Recorder()
    with PodState.open(path) as state:
        assert state.ledger()[0].status == "reserved"
        state.record_verdict(_verdict("t2"), recorder.reservation())
    assert recorder.shown == [(1, 1)]


def test_a_schema_2_database_gains_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with PodState.open(path) as state:
        state.record_verdict(_verdict("t1"))
    conn = sqlite3.connect(path)
    # Back to version 2: without the ledger (3), the review queue (4; its tasks table allows more statuses) and
    # the egress counts (5).
    conn.executescript(
        "DROP TABLE dp_ledger; DROP TABLE reviews; DROP TABLE approved_models; DROP TABLE task_output; "
        "DROP TABLE task_egress"
    )
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with PodState.open(path) as state:
        assert state.ledger() == []
        state.record_verdict(_verdict("t2"), _Recorder().reservation())
        assert len(state.ledger()) == 1


# Reserves a task's release, claims it as the runner would, then waits to be killed before any charge.
_RESERVER = """
import sys, time
from pathlib import Path
from pod_agent.state import PodState, Reservation, Verdict
state = PodState.open(Path(sys.argv[1]))
state.record_verdict(
    Verdict(task_id="t1", nonce="n1", modeller_id="m", kind="train", envelope_json="{}", accepted=True,
            reason=None, keep_until=10**9, now=1),
    Reservation(dataset="d" * 64, round=0, events=(sys.argv[2],), admit=lambda modeller, dataset, new: None),
)
state.claim_next(now=2)
print("reserved", flush=True)
time.sleep(60)
"""


def test_a_reservation_survives_sigkill_before_its_charge_and_is_charged_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with subprocess.Popen([sys.executable, "-c", _RESERVER, str(path), EVENT], stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "reserved"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    recorder = _Recorder()
    with PodState.open(path) as state:
        assert state.requeue_running(now=3) == ["t1"]
        assert [(e.task_id, e.status) for e in state.ledger()] == [("t1", "reserved")]
        state.record_verdict(_verdict("t2"), recorder.reservation())  # the killed task's reservation counts
        state.claim_next(now=4)
        state.finish("t1", status="done", result_json="{}", now=5)
        assert [e.status for e in state.ledger()] == ["charged", "reserved"]
    assert recorder.shown == [(1, 1)]
