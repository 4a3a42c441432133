"""Crash consistency: a writer killed with SIGKILL at random points leaves a consistent state."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pod_agent.state import PodState, TaskStatus, Verdict

# Runs the real PodState API in a loop: admit, claim, finish, deliver; prints each finished iteration.
_WRITER = """
import sys
from pathlib import Path
from pod_agent.state import PodState, Verdict
state = PodState.open(Path(sys.argv[1]))
n = int(sys.argv[2])
state.requeue_running(now=n)  # as the daemon does on start
print("ready", flush=True)
while True:
    state.record_verdict(Verdict(task_id=f"t{n}", nonce=f"n{n}", modeller_id="m", kind="train",
                                 envelope_json="{}", accepted=True, reason=None, keep_until=10**9, now=n))
    task = state.claim_next(now=n)  # the oldest accepted: may be one a killed writer left behind
    state.finish(task.task_id, status="done", result_json="{}", blob_path=None, now=n)
    state.mark_delivered(task.task_id, now=n)
    print(n, flush=True)
    n += 1
"""

# Opens a write transaction by hand, half-admits a task (no seen row), then waits to be killed.
_HALF_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO tasks VALUES ('half', 'm', 'train', 'accepted', NULL, '{}', 1, 1)")
print("in-transaction", flush=True)
time.sleep(60)
"""


def _check_consistent(path: Path, *, writers: int = 1) -> tuple[int, int]:
    """Assert the invariants; return (tasks, delivered)."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tasks = dict(conn.execute("SELECT task_id, status FROM tasks").fetchall())
        seen = {r[0] for r in conn.execute("SELECT task_id FROM seen")}
        outbox = {r[0] for r in conn.execute("SELECT task_id FROM outbox")}
        last_event = dict(conn.execute(
            "SELECT task_id, to_status FROM task_events WHERE id IN (SELECT max(id) FROM task_events GROUP BY task_id)"
        ).fetchall())
    finally:
        conn.close()
    assert set(tasks) == seen, "a task row without its seen row (or the reverse)"
    assert last_event == tasks, "a status changed without its event (or the reverse)"
    assert outbox == {t for t, s in tasks.items() if s in ("done", "failed", "refused")}
    # each killed writer worked on one task at a time, so it left at most one unfinished
    assert sum(1 for s in tasks.values() if s != "delivered") <= writers
    return len(tasks), sum(1 for s in tasks.values() if s == "delivered")


def test_sigkilled_writer_leaves_consistent_state(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    PodState.open(path).close()
    rng = random.Random(4)
    next_n, confirmed = 0, 0
    for writers in range(1, 7):
        with subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(next_n)],
                              stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            first = int(proc.stdout.readline())  # at least one task went all the way through
            time.sleep(rng.uniform(0.0, 0.1))
            os.kill(proc.pid, signal.SIGKILL)
            finished = [first] + [int(line) for line in proc.stdout.read().split()]
        n_tasks, delivered = _check_consistent(path, writers=writers)
        confirmed += len(finished)
        assert delivered >= confirmed  # every finished iteration the writer reported survived the kill
        next_n = n_tasks + 100
    with PodState.open(path) as state:
        counts = state.counts()
        assert counts[TaskStatus.DELIVERED] >= confirmed > 0
        state.requeue_running(now=0)  # what the daemon does on start; must work on the recovered file


def test_transaction_open_at_kill_time_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with PodState.open(path) as state:
        state.record_verdict(Verdict(task_id="kept", nonce="n-kept", modeller_id="m", kind="train",
                                     envelope_json="{}", accepted=True, reason=None, keep_until=10, now=1))
    with subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(path)], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in-transaction"
        os.kill(proc.pid, signal.SIGKILL)
    with PodState.open(path) as state:
        assert state.get_task("half") is None
        assert [t.task_id for t in state.list_tasks()] == ["kept"]
        state.record_verdict(Verdict(task_id="half", nonce="n-half", modeller_id="m", kind="train",
                                     envelope_json="{}", accepted=True, reason=None, keep_until=10, now=2))
    _check_consistent(path, writers=2)
