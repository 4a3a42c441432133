"""SQLite implementation of the hub's ``Storage`` (a file, or ``:memory:`` for tests).

Owns the table layout and transactions. One connection guarded by a lock: the
hub is a reference server for development and small deployments, and sqlite3
serialises writers anyway. WAL mode for a file so readers do not block the
writer. Idempotency (same task or result twice) is decided here by comparing
the stored bytes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pod_agent.errors import HubError
from pod_agent.hub.storage import (
    BlobRecord,
    DeliveryRecord,
    ModellerRecord,
    ModelRecord,
    PodRecord,
    PutOutcome,
    ResultRecord,
    RoundMessageRecord,
    StorageConflict,
    TaskRecord,
)

# Named, not *: a hub database written by an older version may hold columns this one no longer reads.
_POD_COLUMNS = (
    "name, key_id, public_key, schema, schema_hash, row_count, sandbox_level, heartbeat_s, registered_at, last_seen"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    name TEXT PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, public_key TEXT NOT NULL,
    schema TEXT NOT NULL, schema_hash TEXT NOT NULL, row_count INTEGER NOT NULL,
    sandbox_level TEXT NOT NULL, heartbeat_s REAL NOT NULL, registered_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS modellers (
    key_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, name TEXT NOT NULL, registered_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version TEXT NOT NULL, style TEXT NOT NULL, class_name TEXT, source TEXT NOT NULL,
    sha256 TEXT NOT NULL, weights_sha256 TEXT, owner TEXT NOT NULL, created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, modeller_id TEXT NOT NULL, envelope BLOB NOT NULL, pods TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    task_id TEXT NOT NULL REFERENCES tasks(task_id), pod TEXT NOT NULL, seq INTEGER NOT NULL,
    acked_at INTEGER, refusal TEXT, result_status TEXT, progress TEXT,
    PRIMARY KEY (task_id, pod)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (pod, acked_at, seq);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT NOT NULL, pod TEXT NOT NULL, envelope BLOB NOT NULL, received_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, pod)
);
CREATE TABLE IF NOT EXISTS round_messages (
    task_id TEXT NOT NULL, round INTEGER NOT NULL, stage TEXT NOT NULL, sender TEXT NOT NULL,
    envelope BLOB NOT NULL, received_at INTEGER NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE (task_id, round, stage, sender)
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, created_at INTEGER NOT NULL
);
"""


class SqliteStorage:
    """``Storage`` on one sqlite3 connection; thread-safe through a lock."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise HubError(f"hub database {self.path!r} cannot be opened: {exc}; check the path and permissions") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- pods -------------------------------------------------------------------------------

    def upsert_pod(self, pod: PodRecord) -> None:
        with self._lock, self._tx():
            row = self._db.execute("SELECT key_id FROM pods WHERE name = ?", (pod.name,)).fetchone()
            if row is not None and row[0] != pod.key_id:
                raise StorageConflict(
                    f"pod name {pod.name!r} is registered to another key ({row[0][:12]}...); "
                    f"choose another pod.name, or (if this pod was re-keyed) the hub operator releases the name "
                    f"with `pod-agent hub release-pod --db HUB_DB {pod.name}`"
                )
            other = self._db.execute("SELECT name FROM pods WHERE key_id = ?", (pod.key_id,)).fetchone()
            if other is not None and other[0] != pod.name:
                raise StorageConflict(
                    f"key {pod.key_id[:12]}... is already registered as pod {other[0]!r}; one key per pod"
                )
            self._db.execute(
                "INSERT INTO pods (name, key_id, public_key, schema, schema_hash, row_count, sandbox_level,"
                " heartbeat_s, registered_at, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET schema=excluded.schema, schema_hash=excluded.schema_hash,"
                " row_count=excluded.row_count, sandbox_level=excluded.sandbox_level,"
                " heartbeat_s=excluded.heartbeat_s, last_seen=excluded.last_seen",
                (
                    pod.name, pod.key_id, pod.public_key, json.dumps(pod.schema), pod.schema_hash, pod.row_count,
                    pod.sandbox_level, pod.heartbeat_s, pod.registered_at, pod.last_seen,
                ),
            )

    def get_pod(self, name: str) -> PodRecord | None:
        return self._one_pod(f"SELECT {_POD_COLUMNS} FROM pods WHERE name = ?", name)

    def pod_by_key(self, key_id: str) -> PodRecord | None:
        return self._one_pod(f"SELECT {_POD_COLUMNS} FROM pods WHERE key_id = ?", key_id)

    def list_pods(self) -> list[PodRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_POD_COLUMNS} FROM pods ORDER BY name").fetchall()
        return [_pod(r) for r in rows]

    def touch_pod(self, name: str, *, now: int) -> None:
        with self._lock:
            self._db.execute("UPDATE pods SET last_seen = ? WHERE name = ?", (now, name))

    def release_pod(self, name: str) -> bool:
        with self._lock, self._tx():
            return self._db.execute("DELETE FROM pods WHERE name = ?", (name,)).rowcount > 0

    def _one_pod(self, sql: str, arg: str) -> PodRecord | None:
        with self._lock:
            row = self._db.execute(sql, (arg,)).fetchone()
        return None if row is None else _pod(row)

    # -- modellers and models ---------------------------------------------------------------

    def upsert_modeller(self, modeller: ModellerRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO modellers (key_id, public_key, name, registered_at) VALUES (?,?,?,?)"
                " ON CONFLICT(key_id) DO UPDATE SET name=excluded.name",
                (modeller.key_id, modeller.public_key, modeller.name, modeller.registered_at),
            )

    def get_modeller(self, key_id: str) -> ModellerRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key_id, public_key, name, registered_at FROM modellers WHERE key_id = ?", (key_id,)
            ).fetchone()
        return None if row is None else ModellerRecord(*row)

    def put_model(self, model: ModelRecord) -> PutOutcome:
        with self._lock, self._tx():
            row = self._db.execute(
                "SELECT sha256, weights_sha256 FROM models WHERE name = ? AND version = ?", (model.name, model.version)
            ).fetchone()
            if row is not None:
                if (row[0], row[1]) == (model.sha256, model.weights_sha256):
                    return "duplicate"
                raise StorageConflict(
                    f"model {model.name}@{model.version} already exists with other content; publish a new version"
                )
            self._db.execute(
                "INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    model.name, model.version, model.style, model.class_name, model.source, model.sha256,
                    model.weights_sha256, model.owner, model.created_at,
                ),
            )
            return "stored"

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM models WHERE name = ? AND version = ?", (name, version)).fetchone()
        return None if row is None else ModelRecord(*row)

    # -- tasks and deliveries ---------------------------------------------------------------

    def add_task(self, task: TaskRecord) -> PutOutcome:
        with self._lock, self._tx():
            row = self._db.execute("SELECT envelope FROM tasks WHERE task_id = ?", (task.task_id,)).fetchone()
            if row is not None:
                if bytes(row[0]) == task.envelope:
                    return "duplicate"
                raise StorageConflict(f"task {task.task_id} already exists with another envelope; use a new task_id")
            self._db.execute(
                "INSERT INTO tasks VALUES (?,?,?,?,?)",
                (task.task_id, task.modeller_id, task.envelope, json.dumps(list(task.pods)), task.created_at),
            )
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM deliveries").fetchone()[0]
            for i, pod in enumerate(task.pods):
                self._db.execute(
                    "INSERT INTO deliveries (task_id, pod, seq) VALUES (?,?,?)", (task.task_id, pod, seq + 1 + i)
                )
            return "stored"

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _task(row)

    def pending_tasks(self, pod: str) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT t.* FROM deliveries d JOIN tasks t ON t.task_id = d.task_id"
                " WHERE d.pod = ? AND d.acked_at IS NULL ORDER BY d.seq",
                (pod,),
            ).fetchall()
        return [_task(r) for r in rows]

    def ack_delivery(self, task_id: str, pod: str, *, now: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE deliveries SET acked_at = COALESCE(acked_at, ?) WHERE task_id = ? AND pod = ?",
                (now, task_id, pod),
            )
        return cur.rowcount > 0

    def record_refusal(self, task_id: str, pod: str, code: str, *, now: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE deliveries SET refusal = ?, acked_at = COALESCE(acked_at, ?) WHERE task_id = ? AND pod = ?",
                (code, now, task_id, pod),
            )
        return cur.rowcount > 0

    def record_progress(self, task_id: str, pod: str, event: dict[str, object]) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE deliveries SET progress = ? WHERE task_id = ? AND pod = ?", (json.dumps(event), task_id, pod)
            )
        return cur.rowcount > 0

    def deliveries(self, task_id: str) -> list[DeliveryRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id, pod, acked_at, refusal, result_status, progress FROM deliveries"
                " WHERE task_id = ? ORDER BY pod",
                (task_id,),
            ).fetchall()
        return [
            DeliveryRecord(
                task_id=r[0], pod=r[1], acked_at=r[2], refusal=r[3], result_status=r[4],
                progress=None if r[5] is None else json.loads(r[5]),
            )
            for r in rows
        ]

    # -- results ----------------------------------------------------------------------------

    def put_result(self, task_id: str, pod: str, envelope: bytes, *, status: str, now: int) -> PutOutcome:
        with self._lock, self._tx():
            row = self._db.execute(
                "SELECT envelope FROM results WHERE task_id = ? AND pod = ?", (task_id, pod)
            ).fetchone()
            if row is not None:
                if bytes(row[0]) == envelope:
                    return "duplicate"
                raise StorageConflict(
                    f"pod {pod!r} already delivered a different result for task {task_id}; results are immutable"
                )
            self._db.execute("INSERT INTO results VALUES (?,?,?,?)", (task_id, pod, envelope, now))
            self._db.execute(
                "UPDATE deliveries SET result_status = ?, acked_at = COALESCE(acked_at, ?)"
                " WHERE task_id = ? AND pod = ?",
                (status, now, task_id, pod),
            )
            return "stored"

    def results(self, task_id: str) -> list[ResultRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id, pod, envelope, received_at FROM results WHERE task_id = ? ORDER BY pod", (task_id,)
            ).fetchall()
        return [ResultRecord(task_id=r[0], pod=r[1], envelope=bytes(r[2]), received_at=r[3]) for r in rows]

    # -- secure rounds ----------------------------------------------------------------------

    def put_round_message(self, message: RoundMessageRecord) -> PutOutcome:
        key = (message.task_id, message.round, message.stage, message.sender)
        with self._lock, self._tx():
            row = self._db.execute(
                "SELECT envelope FROM round_messages WHERE task_id = ? AND round = ? AND stage = ? AND sender = ?", key
            ).fetchone()
            if row is not None:
                if bytes(row[0]) == message.envelope:
                    return "duplicate"
                raise StorageConflict(
                    f"{message.sender!r} already sent a different {message.stage} message for task {message.task_id} "
                    f"round {message.round}; one message per sender and stage"
                )
            self._db.execute(
                "INSERT INTO round_messages (task_id, round, stage, sender, envelope, received_at)"
                " VALUES (?,?,?,?,?,?)",
                (*key, message.envelope, message.received_at),
            )
            return "stored"

    def round_messages(self, task_id: str, round_index: int, stage: str) -> list[RoundMessageRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id, round, stage, sender, envelope, received_at FROM round_messages"
                " WHERE task_id = ? AND round = ? AND stage = ? ORDER BY seq",
                (task_id, round_index, stage),
            ).fetchall()
        return [
            RoundMessageRecord(
                task_id=r[0], round=int(r[1]), stage=r[2], sender=r[3], envelope=bytes(r[4]), received_at=int(r[5])
            )
            for r in rows
        ]

    # -- blobs ------------------------------------------------------------------------------

    def put_blob(self, blob: BlobRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?,?,?)", (blob.sha256, blob.size_bytes, blob.created_at)
            )

    def get_blob(self, sha256: str) -> BlobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT sha256, size_bytes, created_at FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else BlobRecord(*row)

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (autocommit connection otherwise)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _pod(row: tuple[Any, ...]) -> PodRecord:
    (name, key_id, public_key, schema, schema_hash, row_count, level, heartbeat_s, registered, seen) = row
    return PodRecord(
        name=str(name), key_id=str(key_id), public_key=str(public_key), schema=json.loads(schema),
        schema_hash=str(schema_hash), row_count=int(row_count), sandbox_level=str(level),
        heartbeat_s=float(heartbeat_s), registered_at=int(registered), last_seen=int(seen),
    )


def _task(row: tuple[Any, ...]) -> TaskRecord:
    task_id, modeller_id, envelope, pods, created = row
    return TaskRecord(
        task_id=str(task_id), modeller_id=str(modeller_id), envelope=bytes(envelope),
        pods=tuple(json.loads(pods)), created_at=int(created),
    )
