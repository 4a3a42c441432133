"""The pod's durable state: one SQLite file (WAL) with tasks, seen nonces, the result outbox, the privacy ledger.

Owns the schema and every write to it. The life cycle it enforces is in
``records.py``; what is admitted is decided by ``pod_agent.policy``; the daemon
(``pod_agent.agent``) drives it.

API (synchronous; the daemon calls it through ``asyncio.to_thread``; all times are
integer Unix seconds):

    state = PodState.open(state_dir / "state.sqlite")    # creates it (0600) if missing
    # replay protection and admission, used by TaskVerifier
    state.ensure_unseen(task_id=..., nonce=...)           # raises AlreadySeen
    state.record_verdict(Verdict(...), reservation=None)  # seen row + task row (+ ledger rows), one transaction
    state.purge_seen(now=...) -> int                      # forget nonces whose keep_until has passed
    # review queue (security.review): a verdict with a ReviewHold is stored pending_review
    state.is_approved(modeller_keys=..., name=..., sha256=...) -> bool   # the state's allow-list
    state.reviews(pending_only=True) -> list[ReviewRecord]   # oldest first
    state.review(task_id) -> ReviewRecord | None
    state.last_approved(model_name) -> ApprovedModel | None  # the newest approval of that name
    state.decide_review(task_id, approve=..., by=..., now=...) -> list[str]   # the tasks it moved
    state.expire_reviews(now=...) -> list[str]            # pending past their expiry: refused expired
    state.unsent_review_refusals() -> list[TaskRecord]    # rejected/expired, no refusal in the outbox yet
    # tasks
    state.get_task(task_id) -> TaskRecord | None
    state.list_tasks(status=None, limit=1000) -> list[TaskRecord]   # oldest first
    state.counts() -> dict[TaskStatus, int]
    state.claim_next(now=...) -> TaskRecord | None        # oldest accepted task, now running
    state.transition(task_id, TaskStatus.X, now=..., reason=None) -> TaskRecord   # IllegalTransition
    state.requeue_running(now=...) -> list[str]           # after a restart: running -> accepted
    state.history(task_id) -> list[(from, to, reason, at)] # every status change, oldest first
    # outbox
    state.finish(task_id, status=..., result_json=..., blob_path=None, reason=None, now=...)
        # done/failed: transition + outbox row in one transaction; refused: outbox row only
    state.pending_results() -> list[OutboxEntry]          # oldest first
    state.note_attempt(task_id, now=...)                  # count an upload attempt
    state.mark_delivered(task_id, now=...) -> OutboxEntry | None   # idempotent; removes the outbox row
    state.outbox_depth() -> int
    state.audit_rows(since=...) -> list[AuditRow]          # every task since then, with what it released
    # secure aggregation: one release per starting point
    state.record_release(starting_point, task_id=..., now=...)   # raises AlreadyReleased
    state.released(starting_point) -> str | None           # the task that released from it
    # privacy ledger (policy.budget writes the events): reserved with an accepted verdict, charged when the
    # result enters the outbox or a masked update is released, refunded when a task fails before either
    state.ledger(modeller_id=None, dataset=None) -> list[LedgerEntry]   # oldest first
    # SCAFFOLD: this pod's control variate per modeller and run (safetensors bytes; agent.scaffold reads and writes it)
    state.control_variate(modeller_id=..., run_id=...) -> bytes | None
    state.keep_control_variate(modeller_id=..., run_id=..., tensors=..., now=...)   # a modeller's newest 8 runs kept
    state.close()   (or use ``with PodState.open(...) as state``)

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode NORMAL is
already safe against a process crash (kill -9), but may lose the last commits on a
power cut; a lost "seen" row would let a replayed task run twice and a lost verdict
would lose a task, so every commit is made durable. Tasks arrive at human pace, so
the fsync per commit costs nothing that matters.

Concurrency: one connection (``check_same_thread=False``) guarded by a lock, so
calls from ``asyncio.to_thread`` workers are serialised; every write is one
``BEGIN IMMEDIATE`` transaction, which also keeps a second process on the same file
(a CLI reading status) consistent.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

from pod_agent.errors import StateError, TaskRefused
from pod_agent.state.records import (
    LEGAL_TRANSITIONS,
    REVIEW_EXPIRED,
    REVIEW_REJECTED,
    AlreadyReleased,
    AlreadySeen,
    ApprovedModel,
    AuditRow,
    EgressChannel,
    IllegalTransition,
    LedgerEntry,
    LedgerStatus,
    OutboxEntry,
    Reservation,
    ReviewDecision,
    ReviewNotPending,
    ReviewRecord,
    TaskRecord,
    TaskStatus,
    Verdict,
    released_by,
)

SCHEMA_VERSION = 6
# A writer holding the lock (another process) is waited for this long before giving up.
BUSY_TIMEOUT_MS = 10_000

# Schema version 1; _MIGRATIONS below bring it up to SCHEMA_VERSION.
_SCHEMA = """
CREATE TABLE tasks (
    task_id       TEXT PRIMARY KEY,
    modeller_id   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('accepted','refused','running','done','failed','delivered')),
    reason        TEXT,
    envelope_json TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX tasks_by_status ON tasks (status, created_at);
CREATE TABLE task_events (
    id          INTEGER PRIMARY KEY,
    task_id     TEXT NOT NULL REFERENCES tasks (task_id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT,
    at          INTEGER NOT NULL
);
CREATE TABLE seen (
    task_id    TEXT PRIMARY KEY,
    nonce      TEXT NOT NULL UNIQUE,
    keep_until INTEGER NOT NULL
);
CREATE INDEX seen_by_expiry ON seen (keep_until);
CREATE TABLE outbox (
    task_id         TEXT PRIMARY KEY REFERENCES tasks (task_id),
    result_json     TEXT NOT NULL,
    blob_path       TEXT,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_at INTEGER
);
"""

# Schema changes by version: each list upgrades a database from the version before. A new database
# gets _SCHEMA (version 1) and then every step, so new and upgraded databases cannot differ.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "CREATE TABLE releases (starting_point TEXT PRIMARY KEY, task_id TEXT NOT NULL, released_at INTEGER NOT NULL)",
    ),
    3: (
        """CREATE TABLE dp_ledger (
            id          INTEGER PRIMARY KEY,
            task_id     TEXT NOT NULL REFERENCES tasks (task_id),
            round       INTEGER NOT NULL,
            modeller_id TEXT NOT NULL,
            dataset     TEXT NOT NULL,
            event_json  TEXT NOT NULL,
            status      TEXT NOT NULL CHECK (status IN ('reserved','charged','refunded')),
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL
        )""",
        "CREATE INDEX dp_ledger_by_modeller ON dp_ledger (modeller_id, status)",
        "CREATE INDEX dp_ledger_by_dataset ON dp_ledger (dataset, status)",
        "CREATE INDEX dp_ledger_by_task ON dp_ledger (task_id)",
    ),
    # The review queue. SQLite cannot alter a CHECK, so tasks is rebuilt to allow pending_review (foreign
    # keys are off while migrations run, so the tables that reference tasks keep pointing at the new one).
    4: (
        """CREATE TABLE tasks_v4 (
            task_id       TEXT PRIMARY KEY,
            modeller_id   TEXT NOT NULL,
            kind          TEXT NOT NULL,
            status        TEXT NOT NULL CHECK (status IN
                              ('pending_review','accepted','refused','running','done','failed','delivered')),
            reason        TEXT,
            envelope_json TEXT NOT NULL,
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        )""",
        "INSERT INTO tasks_v4 SELECT task_id, modeller_id, kind, status, reason, envelope_json, created_at, updated_at "
        "FROM tasks",
        "DROP TABLE tasks",
        "ALTER TABLE tasks_v4 RENAME TO tasks",
        "CREATE INDEX tasks_by_status ON tasks (status, created_at)",
        """CREATE TABLE reviews (
            task_id      TEXT PRIMARY KEY REFERENCES tasks (task_id),
            modeller_id  TEXT NOT NULL,
            model_name   TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            model_text   TEXT NOT NULL,
            expires_at   INTEGER NOT NULL,
            created_at   INTEGER NOT NULL,
            decision     TEXT CHECK (decision IN ('approved','rejected','expired')),
            decided_by   TEXT,
            decided_at   INTEGER
        )""",
        "CREATE INDEX reviews_pending ON reviews (decision, expires_at)",
        """CREATE TABLE approved_models (
            modeller_id  TEXT NOT NULL,
            model_name   TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            model_text   TEXT NOT NULL,
            approved_by  TEXT NOT NULL,
            approved_at  INTEGER NOT NULL,
            PRIMARY KEY (modeller_id, model_name, model_sha256)
        )""",
        "CREATE INDEX approved_by_name ON approved_models (model_name, approved_at)",
        # What each result released, kept after delivery (when its outbox row is gone) for the audit export.
        """CREATE TABLE task_output (
            task_id      TEXT PRIMARY KEY REFERENCES tasks (task_id),
            n_rows       INTEGER NOT NULL,
            result_bytes INTEGER NOT NULL,
            blob_bytes   INTEGER NOT NULL
        )""",
    ),
    # What a task sent besides its result (secure-round messages, its masked vector, progress), for the export.
    # No foreign key: a progress event may be counted for a task the verifier is still storing.
    5: (
        """CREATE TABLE task_egress (
            task_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            bytes   INTEGER NOT NULL,
            PRIMARY KEY (task_id, channel)
        )""",
    ),
    # SCAFFOLD: each pod's own control variate per modeller and run (safetensors bytes); it never leaves the pod.
    6: (
        """CREATE TABLE IF NOT EXISTS control_variates (
            modeller_id TEXT NOT NULL,
            run_id      TEXT NOT NULL,
            tensors     BLOB NOT NULL,
            updated_at  INTEGER NOT NULL,
            PRIMARY KEY (modeller_id, run_id)
        )""",
    ),
}
# A modeller's SCAFFOLD runs each keep a model-sized control variate here; past this many, its oldest go, so a
# modeller cannot fill the pod's disk by naming new runs.
MAX_CONTROL_RUNS_PER_MODELLER = 8

_TASK_COLUMNS = "task_id, modeller_id, kind, status, reason, envelope_json, created_at, updated_at"
_OUTBOX_COLUMNS = "task_id, result_json, blob_path, created_at, attempts, last_attempt_at"
_LEDGER_COLUMNS = "task_id, round, modeller_id, dataset, event_json, status, created_at, updated_at"
_REVIEW_COLUMNS = (
    "task_id, modeller_id, model_name, model_sha256, model_text, expires_at, created_at, decision, decided_by, "
    "decided_at"
)
_APPROVED_COLUMNS = "modeller_id, model_name, model_sha256, model_text, approved_by, approved_at"


def _task(row: tuple[object, ...]) -> TaskRecord:
    task_id, modeller_id, kind, status, reason, envelope_json, created_at, updated_at = row
    return TaskRecord(
        task_id=str(task_id),
        modeller_id=str(modeller_id),
        kind=str(kind),
        status=TaskStatus(status),
        reason=None if reason is None else str(reason),
        envelope_json=str(envelope_json),
        created_at=int(str(created_at)),
        updated_at=int(str(updated_at)),
    )


def _outbox(row: tuple[object, ...]) -> OutboxEntry:
    task_id, result_json, blob_path, created_at, attempts, last_attempt_at = row
    return OutboxEntry(
        task_id=str(task_id),
        result_json=str(result_json),
        blob_path=None if blob_path is None else Path(str(blob_path)),
        created_at=int(str(created_at)),
        attempts=int(str(attempts)),
        last_attempt_at=None if last_attempt_at is None else int(str(last_attempt_at)),
    )


def _ledger(row: tuple[object, ...]) -> LedgerEntry:
    task_id, round_index, modeller_id, dataset, event_json, status, created_at, updated_at = row
    return LedgerEntry(
        task_id=str(task_id),
        round=int(str(round_index)),
        modeller_id=str(modeller_id),
        dataset=str(dataset),
        event_json=str(event_json),
        status=cast(LedgerStatus, str(status)),
        created_at=int(str(created_at)),
        updated_at=int(str(updated_at)),
    )


def _review(row: tuple[object, ...]) -> ReviewRecord:
    task_id, modeller_id, name, sha256, text, expires_at, created_at, decision, decided_by, decided_at = row
    return ReviewRecord(
        task_id=str(task_id), modeller_id=str(modeller_id), model_name=str(name), model_sha256=str(sha256),
        model_text=str(text), expires_at=int(str(expires_at)), created_at=int(str(created_at)),
        decision=None if decision is None else cast(ReviewDecision, str(decision)),
        decided_by=None if decided_by is None else str(decided_by),
        decided_at=None if decided_at is None else int(str(decided_at)),
    )


def _approved(row: tuple[object, ...]) -> ApprovedModel:
    modeller_id, name, sha256, text, by, at = row
    return ApprovedModel(modeller_id=str(modeller_id), model_name=str(name), model_sha256=str(sha256),
                         model_text=str(text), approved_by=str(by), approved_at=int(str(at)))


class PodState:
    """The pod's SQLite state. Open with ``PodState.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> PodState:
        """Open (creating with mode 0600 if missing) and check the state database at ``path``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # another process created it between the check and the open
        except OSError as exc:
            raise StateError(
                f"cannot create state database {path} ({exc.strerror}): check that the state_dir is writable"
            ) from exc
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {path}: {exc}: check the path and its permissions") from exc
        state = cls(conn, path)
        try:
            state._prepare()
        except BaseException:
            conn.close()
            raise
        return state

    def _prepare(self) -> None:
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateError(
                    f"state database {self._path} cannot use WAL (journal mode {mode}): "
                    "put the state_dir on a local filesystem"
                )
            self._conn.execute("PRAGMA synchronous = FULL")
            # Foreign keys are switched on after the migrations: a table rebuild (step 4) drops a referenced table.
            self._conn.execute("PRAGMA foreign_keys = OFF")
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StateError(
                    f"state database {self._path} is damaged ({check}): stop the agent, move the file aside and restart"
                )
            with self._tx() as conn:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    version = 1
                if version < SCHEMA_VERSION:
                    for step in range(version + 1, SCHEMA_VERSION + 1):
                        for statement in _MIGRATIONS[step]:
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise StateError(
                        f"state database {self._path} has schema version {version}, this pod-agent knows "
                        f"{SCHEMA_VERSION}: run the pod-agent version that wrote it"
                    )
                broken = conn.execute("PRAGMA foreign_key_check").fetchone()
                if broken is not None:
                    raise StateError(
                        f"state database {self._path} has a row in {broken[0]} whose task is missing: "
                        "stop the agent, move the file aside and restart"
                    )
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"state database {self._path} is not a usable SQLite file ({exc}): move it aside and restart"
            ) from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(
                    f"state database {self._path} is busy or unwritable ({exc}): is another agent using it?"
                ) from exc
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StateError(
                    f"state database {self._path} write failed ({exc}): check disk space and permissions"
                ) from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._conn.execute("ROLLBACK")
                    raise StateError(f"cannot commit to state database {self._path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PodState:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise StateError(f"cannot read state database {self._path}: {exc}") from exc

    # -- replay protection and admission -------------------------------------------------

    def ensure_unseen(self, *, task_id: str, nonce: str) -> None:
        """Raise AlreadySeen if this task id or nonce was seen (or the task is known)."""
        rows = self._read(
            "SELECT 1 FROM seen WHERE task_id = ? OR nonce = ? UNION ALL SELECT 1 FROM tasks WHERE task_id = ? LIMIT 1",
            (task_id, nonce, task_id),
        )
        if rows:
            raise AlreadySeen(task_id, nonce)

    def record_verdict(self, verdict: Verdict, reservation: Reservation | None = None) -> None:
        """Store the seen nonce and the task (accepted, or refused with its code) in one transaction.

        With a ``reservation`` for an accepted task, the same transaction (BEGIN IMMEDIATE, so two
        verifications cannot both read the ledger before either writes) asks ``reservation.admit``
        about the modeller's and the dataset's reserved and charged events; if it raises TaskRefused
        the task is stored refused with that code and the refusal re-raised after the commit,
        otherwise the task's events are stored as reserved.
        """
        refusal: TaskRefused | None = None
        with self._tx() as conn:
            if verdict.accepted and reservation is not None:
                try:
                    self._admit(conn, verdict, reservation)
                except TaskRefused as exc:
                    refusal = exc
                    verdict = replace(verdict, accepted=False, reason=exc.code)
            status = TaskStatus.ACCEPTED if verdict.accepted else TaskStatus.REFUSED
            if verdict.accepted and verdict.review is not None:
                status = TaskStatus.PENDING_REVIEW
            try:
                conn.execute(
                    "INSERT INTO seen (task_id, nonce, keep_until) VALUES (?, ?, ?)",
                    (verdict.task_id, verdict.nonce, verdict.keep_until),
                )
                conn.execute(
                    f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        verdict.task_id,
                        verdict.modeller_id,
                        verdict.kind,
                        status.value,
                        verdict.reason,
                        verdict.envelope_json,
                        verdict.now,
                        verdict.now,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadySeen(verdict.task_id, verdict.nonce) from exc
            self._event(conn, verdict.task_id, None, status, verdict.reason, verdict.now)
            if status is TaskStatus.PENDING_REVIEW and verdict.review is not None:
                hold = verdict.review
                conn.execute(
                    f"INSERT INTO reviews ({_REVIEW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
                    (verdict.task_id, verdict.modeller_id, hold.model_name, hold.model_sha256, hold.model_text,
                     verdict.keep_until, verdict.now),
                )
            if verdict.accepted and reservation is not None:
                conn.executemany(
                    f"INSERT INTO dp_ledger ({_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?)",
                    [
                        (verdict.task_id, reservation.round, verdict.modeller_id, reservation.dataset, event,
                         verdict.now, verdict.now)
                        for event in reservation.events
                    ],
                )
        if refusal is not None:
            raise refusal

    @staticmethod
    def _admit(conn: sqlite3.Connection, verdict: Verdict, reservation: Reservation) -> None:
        def live(column: str, values: tuple[str, ...]) -> list[str]:
            marks = ", ".join("?" * len(values))
            rows = conn.execute(
                f"SELECT event_json FROM dp_ledger WHERE {column} IN ({marks}) AND status != 'refunded' ORDER BY id",
                values,
            ).fetchall()
            return [str(row[0]) for row in rows]

        reservation.admit(live("modeller_id", reservation.modeller_keys or (verdict.modeller_id,)),
                          live("dataset", (reservation.dataset,)), reservation.events)

    # -- review queue --------------------------------------------------------------------------

    def is_approved(self, *, modeller_keys: Sequence[str], name: str, sha256: str) -> bool:
        """Whether the owner approved model ``name`` with ``sha256`` for any of these modeller key ids."""
        marks = ", ".join("?" * len(modeller_keys))
        rows = self._read(
            f"SELECT 1 FROM approved_models WHERE modeller_id IN ({marks}) AND model_name = ? AND model_sha256 = ? "
            "LIMIT 1",
            (*modeller_keys, name, sha256),
        )
        return bool(rows)

    def reviews(self, *, pending_only: bool = True) -> list[ReviewRecord]:
        """The review queue oldest first: the undecided reviews, or all of them."""
        where = "WHERE decision IS NULL" if pending_only else ""
        return [
            _review(r) for r in self._read(f"SELECT {_REVIEW_COLUMNS} FROM reviews {where} ORDER BY created_at, rowid")
        ]

    def review(self, task_id: str) -> ReviewRecord | None:
        rows = self._read(f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE task_id = ?", (task_id,))
        return _review(rows[0]) if rows else None

    def last_approved(self, model_name: str) -> ApprovedModel | None:
        """The newest approval of a model by this name, for any modeller: what a new version is diffed against."""
        rows = self._read(
            f"SELECT {_APPROVED_COLUMNS} FROM approved_models WHERE model_name = ? "
            "ORDER BY approved_at DESC, rowid DESC "
            "LIMIT 1",
            (model_name,),
        )
        return _approved(rows[0]) if rows else None

    def decide_review(self, task_id: str, *, approve: bool, by: str, now: int) -> list[str]:
        """Approve or reject the model a pending task waits on; return the ids of the tasks this moved.

        Approval adds (modeller key, name, sha256) to the state's allow-list and queues every task
        of that modeller key waiting on the same model; rejection refuses this task (review_rejected)
        and refunds its privacy-ledger reservation. A task past its expiry cannot be decided.
        """
        with self._tx() as conn:
            row = conn.execute(f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                raise ReviewNotPending(task_id, "is not in the review queue")
            review = _review(row)
            if review.decision is not None:
                raise ReviewNotPending(task_id, f"was already {review.decision} by {review.decided_by}")
            if now > review.expires_at:
                raise ReviewNotPending(task_id, "has expired; the modeller must send a new task")
            if not approve:
                self._close_review(conn, review, decision="rejected", by=by, reason=REVIEW_REJECTED, now=now)
                return [task_id]
            conn.execute(
                f"INSERT OR IGNORE INTO approved_models ({_APPROVED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (review.modeller_id, review.model_name, review.model_sha256, review.model_text, by, now),
            )
            waiting = conn.execute(
                f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE decision IS NULL AND modeller_id = ? AND model_name = ? "
                "AND model_sha256 = ? AND expires_at >= ?",
                (review.modeller_id, review.model_name, review.model_sha256, now),
            ).fetchall()
            moved = []
            for other in map(_review, waiting):
                self._decide(conn, other, decision="approved", by=by, now=now)
                self._move(conn, self._locked_task(conn, other.task_id), TaskStatus.ACCEPTED, now=now, reason=None)
                moved.append(other.task_id)
            return moved

    def expire_reviews(self, *, now: int) -> list[str]:
        """Refuse, as expired, every pending task whose expiry passed while it waited; return their ids."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE decision IS NULL AND expires_at < ? ORDER BY created_at",
                (now,),
            ).fetchall()
            for review in map(_review, rows):
                self._close_review(conn, review, decision="expired", by="pod-agent", reason=REVIEW_EXPIRED, now=now)
            return [str(r[0]) for r in rows]

    def unsent_review_refusals(self) -> list[TaskRecord]:
        """Tasks refused by a review decision or its expiry whose signed refusal is not yet in the outbox."""
        rows = self._read(
            f"SELECT {', '.join('t.' + c for c in _TASK_COLUMNS.split(', '))} FROM tasks t JOIN reviews r "
            "ON r.task_id = t.task_id WHERE t.status = 'refused' AND t.task_id NOT IN (SELECT task_id FROM outbox) "
            "ORDER BY r.decided_at"
        )
        return [_task(r) for r in rows]

    def _close_review(
        self,
        conn: sqlite3.Connection,
        review: ReviewRecord,
        *,
        decision: ReviewDecision,
        by: str,
        reason: str,
        now: int,
    ) -> None:
        self._decide(conn, review, decision=decision, by=by, now=now)
        self._move(conn, self._locked_task(conn, review.task_id), TaskStatus.REFUSED, now=now, reason=reason)
        self._settle(conn, review.task_id, "refunded", now)

    @staticmethod
    def _decide(conn: sqlite3.Connection, review: ReviewRecord, *, decision: ReviewDecision, by: str, now: int) -> None:
        conn.execute(
            "UPDATE reviews SET decision = ?, decided_by = ?, decided_at = ? WHERE task_id = ?",
            (decision, by, now, review.task_id),
        )

    def purge_seen(self, *, now: int) -> int:
        """Forget nonces whose keep_until is past; return how many. A replay of one is refused as expired."""
        with self._tx() as conn:
            return conn.execute("DELETE FROM seen WHERE keep_until < ?", (now,)).rowcount

    # -- tasks ----------------------------------------------------------------------------

    def get_task(self, task_id: str) -> TaskRecord | None:
        rows = self._read(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    def list_tasks(
        self, status: TaskStatus | None = None, *, limit: int = 1000, newest_first: bool = False
    ) -> list[TaskRecord]:
        """Tasks oldest first (or newest first), optionally only those in ``status``."""
        where, params = ("", ()) if status is None else ("WHERE status = ?", (status.value,))
        order = "DESC" if newest_first else "ASC"
        rows = self._read(
            f"SELECT {_TASK_COLUMNS} FROM tasks {where} ORDER BY created_at {order}, rowid {order} LIMIT ?",
            (*params, limit),
        )
        return [_task(r) for r in rows]

    def counts(self) -> dict[TaskStatus, int]:
        found = {
            str(status): int(str(n)) for status, n in self._read("SELECT status, count(*) FROM tasks GROUP BY status")
        }
        return {s: found.get(s.value, 0) for s in TaskStatus}

    def claim_next(self, *, now: int) -> TaskRecord | None:
        """Take the oldest accepted task and mark it running; None when the queue is empty."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE status = 'accepted' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            return self._move(conn, _task(row), TaskStatus.RUNNING, now=now, reason=None)

    def transition(self, task_id: str, to: TaskStatus, *, now: int, reason: str | None = None) -> TaskRecord:
        """Move a task to ``to`` if the life cycle allows it; raise IllegalTransition otherwise."""
        with self._tx() as conn:
            return self._move(conn, self._locked_task(conn, task_id), to, now=now, reason=reason)

    def requeue_running(self, *, now: int) -> list[str]:
        """After a restart: put tasks left running by a dead process back in the queue; return their ids."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE status = 'running' ORDER BY created_at, rowid"
            ).fetchall()
            return [
                self._move(conn, _task(r), TaskStatus.ACCEPTED, now=now, reason="interrupted").task_id for r in rows
            ]

    def _locked_task(self, conn: sqlite3.Connection, task_id: str) -> TaskRecord:
        row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise StateError(f"task {task_id} is not in the state database {self._path}")
        return _task(row)

    def _move(
        self, conn: sqlite3.Connection, task: TaskRecord, to: TaskStatus, *, now: int, reason: str | None
    ) -> TaskRecord:
        if to not in LEGAL_TRANSITIONS[task.status]:
            raise IllegalTransition(task.task_id, task.status, to)
        new_reason = reason if reason is not None else task.reason
        conn.execute(
            "UPDATE tasks SET status = ?, reason = ?, updated_at = ? WHERE task_id = ?",
            (to.value, new_reason, now, task.task_id),
        )
        self._event(conn, task.task_id, task.status, to, reason, now)
        return replace(task, status=to, reason=new_reason, updated_at=now)

    @staticmethod
    def _event(
        conn: sqlite3.Connection, task_id: str, old: TaskStatus | None, new: TaskStatus, reason: str | None, now: int
    ) -> None:
        conn.execute(
            "INSERT INTO task_events (task_id, from_status, to_status, reason, at) VALUES (?, ?, ?, ?, ?)",
            (task_id, None if old is None else old.value, new.value, reason, now),
        )

    def history(self, task_id: str) -> list[tuple[str | None, str, str | None, int]]:
        """(from, to, reason, at) for every status change of a task, oldest first."""
        rows = self._read(
            "SELECT from_status, to_status, reason, at FROM task_events WHERE task_id = ? ORDER BY id", (task_id,)
        )
        return [
            (None if f is None else str(f), str(t), None if r is None else str(r), int(str(a))) for f, t, r, a in rows
        ]

    # -- outbox ---------------------------------------------------------------------------

    def finish(
        self,
        task_id: str,
        *,
        status: Literal["done", "failed", "refused"],
        result_json: str,
        blob_path: Path | None = None,
        reason: str | None = None,
        now: int,
    ) -> None:
        """Put a signed result in the outbox; done/failed also move the task there, in the same transaction,
        and settle its privacy-ledger reservation (done: charged; failed: refunded unless already charged).

        ``refused`` is for a task already refused by the verifier: its signed refusal is queued for
        delivery and its status stays refused until ``mark_delivered``.
        """
        wanted = TaskStatus(status)
        with self._tx() as conn:
            task = self._locked_task(conn, task_id)
            if wanted is TaskStatus.REFUSED:
                if task.status is not TaskStatus.REFUSED:
                    raise StateError(f"task {task_id} is {task.status.value}, not refused: finish it as done or failed")
            else:
                self._move(conn, task, wanted, now=now, reason=reason)
                # A done task's result leaves with this outbox row; a failed one sends only its code, so what
                # it reserved and did not release already (a masked update is charged at release) is refunded.
                self._settle(conn, task_id, "charged" if wanted is TaskStatus.DONE else "refunded", now)
            try:
                conn.execute(
                    f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES (?, ?, ?, ?, 0, NULL)",
                    (task_id, result_json, None if blob_path is None else str(blob_path), now),
                )
                conn.execute(
                    "INSERT INTO task_output (task_id, n_rows, result_bytes, blob_bytes) VALUES (?, ?, ?, ?)",
                    (task_id, *released_by(result_json, blob_path)),
                )
            except sqlite3.IntegrityError as exc:
                raise StateError(f"task {task_id} already has a result in the outbox: a task has one result") from exc

    def pending_results(self, *, limit: int = 1000) -> list[OutboxEntry]:
        """Results not yet acknowledged by the hub, oldest first."""
        rows = self._read(f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY created_at, rowid LIMIT ?", (limit,))
        return [_outbox(r) for r in rows]

    def note_attempt(self, task_id: str, *, now: int) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ? WHERE task_id = ?", (now, task_id)
            )

    def mark_delivered(self, task_id: str, *, now: int) -> OutboxEntry | None:
        """The hub acknowledged the result: drop it from the outbox, mark the task delivered.

        Idempotent: a repeated acknowledgement of a delivered task returns None. Returns the
        removed entry so the caller can delete its blob file.
        """
        with self._tx() as conn:
            task = self._locked_task(conn, task_id)
            if task.status is TaskStatus.DELIVERED:
                return None
            row = conn.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                raise StateError(f"task {task_id} has no result in the outbox: finish it before marking it delivered")
            self._move(conn, task, TaskStatus.DELIVERED, now=now, reason=None)
            conn.execute("DELETE FROM outbox WHERE task_id = ?", (task_id,))
            return _outbox(row)

    def audit_rows(self, *, since: int) -> list[AuditRow]:
        """Every task received at or after ``since``, oldest first, with what it released (``audit.py``)."""
        rows = self._read(
            f"SELECT {', '.join('t.' + c for c in _TASK_COLUMNS.split(', '))}, o.n_rows, o.result_bytes, "
            "o.blob_bytes FROM tasks t LEFT JOIN task_output o ON o.task_id = t.task_id WHERE t.created_at >= ? "
            "ORDER BY t.created_at, t.rowid",
            (since,),
        )
        ledger = self._read(
            "SELECT task_id, event_json FROM dp_ledger WHERE status = 'charged' AND task_id IN "
            "(SELECT task_id FROM tasks WHERE created_at >= ?) ORDER BY id",
            (since,),
        )
        charged: dict[str, list[str]] = {}
        for task_id, event in ledger:
            charged.setdefault(str(task_id), []).append(str(event))
        sent: dict[str, dict[str, int]] = {}
        for task_id, channel, count in self._read(
            "SELECT task_id, channel, bytes FROM task_egress WHERE task_id IN "
            "(SELECT task_id FROM tasks WHERE created_at >= ?)",
            (since,),
        ):
            sent.setdefault(str(task_id), {})[str(channel)] = int(str(count))
        out = []
        for row in rows:
            task = _task(row[:8])
            n_rows, result_bytes, blob_bytes = (int(str(v)) if v is not None else 0 for v in row[8:])
            outcome = task.status.value
            if task.status is TaskStatus.DELIVERED:
                outcome = next((to for _, to, _, _ in reversed(self.history(task.task_id)) if to != "delivered"),
                               outcome)
            by_channel = {"result": result_bytes, **sent.get(task.task_id, {})}
            # A secure task's result references the masked vector its round released: counted once, as masked.
            if "masked" not in by_channel:
                by_channel["update"] = blob_bytes
            out.append(AuditRow(task=task, outcome=outcome, n_rows=n_rows,
                                bytes_by_channel={k: v for k, v in sorted(by_channel.items()) if v},
                                dp_events=tuple(charged.get(task.task_id, ()))))
        return out

    def add_egress(self, task_id: str, channel: EgressChannel, nbytes: int) -> None:
        """Count ``nbytes`` more leaving the pod for ``task_id`` on ``channel`` (the audit export's bytes).

        Called before the bytes may leave, so what left is never undercounted; a message retried after a
        failed send is counted once (it carries nothing new)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO task_egress (task_id, channel, bytes) VALUES (?, ?, ?) "
                "ON CONFLICT (task_id, channel) DO UPDATE SET bytes = bytes + excluded.bytes",
                (task_id, channel, nbytes),
            )

    def outbox_depth(self) -> int:
        return int(str(self._read("SELECT count(*) FROM outbox")[0][0]))

    # -- secure aggregation releases --------------------------------------------------------

    def record_release(self, starting_point: str, *, task_id: str, now: int) -> None:
        """Decide to release a masked update trained from ``starting_point``: at most once, ever.

        The check, the record and the charge of the task's privacy-ledger reservation are one
        transaction, committed (fsync) before the caller lets the masked vector leave; a second
        release from the same weights, even by the same task, raises AlreadyReleased, since two
        sums differing by one pod would reveal its update.
        """
        with self._tx() as conn:
            row = conn.execute("SELECT task_id FROM releases WHERE starting_point = ?", (starting_point,)).fetchone()
            if row is not None:
                raise AlreadyReleased(starting_point, str(row[0]))
            conn.execute(
                "INSERT INTO releases (starting_point, task_id, released_at) VALUES (?, ?, ?)",
                (starting_point, task_id, now),
            )
            self._settle(conn, task_id, "charged", now)

    @staticmethod
    def _settle(conn: sqlite3.Connection, task_id: str, to: LedgerStatus, now: int) -> None:
        """Charge or refund a task's reserved ledger events; charged ones stay charged."""
        conn.execute(
            "UPDATE dp_ledger SET status = ?, updated_at = ? WHERE task_id = ? AND status = 'reserved'",
            (to, now, task_id),
        )

    # -- privacy ledger -----------------------------------------------------------------------

    def ledger(self, *, modeller_id: str | None = None, dataset: str | None = None) -> list[LedgerEntry]:
        """Ledger entries, oldest first, optionally only one modeller's or one dataset's."""
        where, params = [], []
        for column, value in (("modeller_id", modeller_id), ("dataset", dataset)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(f"SELECT {_LEDGER_COLUMNS} FROM dp_ledger {clause} ORDER BY id", tuple(params))
        return [_ledger(r) for r in rows]

    # -- SCAFFOLD control variates ----------------------------------------------------------------

    def control_variate(self, *, modeller_id: str, run_id: str) -> bytes | None:
        """This pod's control variate for the modeller's run (safetensors bytes), None before its first task."""
        rows = self._read(
            "SELECT tensors FROM control_variates WHERE modeller_id = ? AND run_id = ?", (modeller_id, run_id)
        )
        return bytes(cast(bytes, rows[0][0])) if rows else None

    def keep_control_variate(self, *, modeller_id: str, run_id: str, tensors: bytes, now: int) -> None:
        """Store the run's new control variate; the modeller's runs beyond MAX_CONTROL_RUNS_PER_MODELLER
        (least recently updated first) are dropped in the same transaction."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO control_variates (modeller_id, run_id, tensors, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (modeller_id, run_id) DO UPDATE SET tensors = excluded.tensors, "
                "updated_at = excluded.updated_at",
                (modeller_id, run_id, tensors, now),
            )
            conn.execute(
                "DELETE FROM control_variates WHERE modeller_id = ? AND run_id NOT IN (SELECT run_id FROM "
                "control_variates WHERE modeller_id = ? ORDER BY updated_at DESC, rowid DESC LIMIT ?)",
                (modeller_id, modeller_id, MAX_CONTROL_RUNS_PER_MODELLER),
            )

    def released(self, starting_point: str) -> str | None:
        """The task that released an update trained from ``starting_point``, if any."""
        rows = self._read("SELECT task_id FROM releases WHERE starting_point = ?", (starting_point,))
        return str(rows[0][0]) if rows else None
