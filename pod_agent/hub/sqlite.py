"""SQLite implementation of the hub's ``Storage`` (a file, or ``:memory:`` for tests).

Owns the table layout and transactions. One connection guarded by a lock: the
hub is a reference server for development and small deployments, and sqlite3
serialises writers anyway. WAL mode for a file so readers do not block the
writer. Idempotency (same task or result twice) is decided here by comparing
the stored bytes. Schema changes are migrations keyed by ``PRAGMA user_version``
(``_MIGRATIONS``): tables are created if missing, columns added, and an older
database's blobs get owners and references from the tasks, results and models
that name them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pod_agent.errors import HubError
from pod_agent.hub.storage import (
    BlobMissing,
    BlobRecord,
    BlobRefRecord,
    BlobUsage,
    DeliveryRecord,
    HubTaskRecord,
    KeyStanding,
    ModellerRecord,
    ModelRecord,
    NonceClaim,
    PendingKey,
    PodRecord,
    PutOutcome,
    ResultRecord,
    RoundMessageRecord,
    StorageConflict,
    first_claims,
    hub_task_record,
    key_standings,
    key_standings_query,
    pending_by_pod,
    pod_record,
)

# Named, not *: a hub database written by an older version may hold columns this one no longer reads.
_POD_COLUMNS = (
    "name, key_id, public_key, schema, schema_hash, row_count, sandbox_level, heartbeat_s, registered_at, last_seen"
)

_KEY_STANDINGS = key_standings_query(
    _POD_COLUMNS, "(SELECT DISTINCT CAST(value AS TEXT) AS key_id FROM json_each(?)) q"
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
CREATE TABLE IF NOT EXISTS pod_rotations (
    pod TEXT NOT NULL, statement BLOB NOT NULL, received_at INTEGER NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE (pod, statement)
);
"""

# Version 1: blob owners and references, public models, enrolment tokens, keys awaiting approval.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS blob_owners (
    sha256 TEXT NOT NULL, key_id TEXT NOT NULL, uploaded_at INTEGER NOT NULL, PRIMARY KEY (sha256, key_id)
);
CREATE INDEX IF NOT EXISTS blob_owners_by_key ON blob_owners (key_id);
CREATE TABLE IF NOT EXISTS blob_refs (
    sha256 TEXT NOT NULL, kind TEXT NOT NULL, task_id TEXT NOT NULL, party TEXT NOT NULL,
    PRIMARY KEY (sha256, kind, task_id, party)
);
CREATE TABLE IF NOT EXISTS enrolment_tokens (
    token_sha256 TEXT PRIMARY KEY, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    used_at INTEGER, used_by TEXT, note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_approvals (
    key_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, requested_at INTEGER NOT NULL,
    approved_at INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_by_pod ON deliveries (pod, task_id);
CREATE TABLE IF NOT EXISTS request_nonces (
    key_id TEXT NOT NULL, nonce TEXT NOT NULL, stamped_at INTEGER NOT NULL, PRIMARY KEY (key_id, nonce)
);
CREATE INDEX IF NOT EXISTS request_nonces_by_time ON request_nonces (stamped_at);
"""
_MODEL_COLUMNS = "name, version, style, class_name, source, sha256, weights_sha256, owner, created_at, public"


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
            _migrate(self._db)
        except sqlite3.Error as exc:
            raise HubError(
                f"hub database {self.path!r} cannot be opened: {exc}; check the path and permissions"
            ) from exc
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

    def key_standings(self, key_ids: Sequence[str]) -> dict[str, KeyStanding]:
        with self._lock:
            rows = self._db.execute(_KEY_STANDINGS, (json.dumps(list(key_ids)),)).fetchall()
        return key_standings(key_ids, rows)

    def list_pods(self) -> list[PodRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_POD_COLUMNS} FROM pods ORDER BY name").fetchall()
        return [pod_record(r) for r in rows]

    def admitted(self, names: Sequence[str]) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT p.name FROM pods p JOIN json_each(?) n ON p.name = n.value WHERE NOT EXISTS"
                " (SELECT 1 FROM key_approvals k WHERE k.key_id = p.key_id AND k.approved_at IS NULL)",
                (json.dumps(list(names)),),
            ).fetchall()
        return {str(r[0]) for r in rows}

    def touch_pod(self, name: str, *, now: int) -> None:
        with self._lock:
            self._db.execute("UPDATE pods SET last_seen = ? WHERE name = ?", (now, name))

    def touch_pods(self, seen: Mapping[str, int]) -> None:
        # One transaction: a commit per row was most of the cost (10,000 rows 200 ms, at once 40 ms).
        with self._lock, self._tx():
            self._db.executemany("UPDATE pods SET last_seen = ? WHERE name = ?", [(t, n) for n, t in seen.items()])

    def add_pod_rotation(self, pod: str, statement: bytes, *, now: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO pod_rotations (pod, statement, received_at) VALUES (?, ?, ?)",
                (pod, statement, now),
            )

    def pod_rotations(self) -> dict[str, list[bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT pod, statement FROM pod_rotations ORDER BY seq").fetchall()
        out: dict[str, list[bytes]] = {}
        for pod, statement in rows:
            out.setdefault(str(pod), []).append(bytes(statement))
        return out

    def release_pod(self, name: str) -> bool:
        with self._lock, self._tx():
            return self._db.execute("DELETE FROM pods WHERE name = ?", (name,)).rowcount > 0

    def _one_pod(self, sql: str, arg: str) -> PodRecord | None:
        with self._lock:
            row = self._db.execute(sql, (arg,)).fetchone()
        return None if row is None else pod_record(row)

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

    def put_model(self, model: ModelRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        with self._lock, self._tx():
            self._reference(refs)
            row = self._db.execute(
                "SELECT sha256, weights_sha256 FROM models WHERE name = ? AND version = ?", (model.name, model.version)
            ).fetchone()
            if row is not None:
                if (row[0], row[1]) == (model.sha256, model.weights_sha256):
                    # The owner's latest word on sharing holds; anyone else's changes nothing.
                    self._db.execute(
                        "UPDATE models SET public = ? WHERE name = ? AND version = ? AND owner = ?",
                        (int(model.public), model.name, model.version, model.owner),
                    )
                    return "duplicate"
                raise StorageConflict(
                    f"model {model.name}@{model.version} already exists with other content; publish a new version"
                )
            self._db.execute(
                f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    model.name, model.version, model.style, model.class_name, model.source, model.sha256,
                    model.weights_sha256, model.owner, model.created_at, int(model.public),
                ),
            )
            return "stored"

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        if row is None:
            return None
        name_, version_, style, class_name, source, sha256, weights_sha256, owner, created_at, public = row
        return ModelRecord(
            name=name_, version=version_, style=style, class_name=class_name, source=source, sha256=sha256,
            weights_sha256=weights_sha256, owner=owner, created_at=int(created_at), public=bool(public),
        )

    # -- tasks and deliveries ---------------------------------------------------------------

    def add_task(self, task: HubTaskRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        with self._lock, self._tx():
            self._reference(refs)
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

    def get_task(self, task_id: str) -> HubTaskRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else hub_task_record(row)

    def cohort_registrations(self, task_id: str) -> list[tuple[str, str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT p.name, p.schema_hash, p.key_id FROM deliveries d JOIN pods p ON p.name = d.pod"
                " WHERE d.task_id = ?",
                (task_id,),
            ).fetchall()
        return [(str(name), str(schema_hash), str(key_id)) for name, schema_hash, key_id in rows]

    def recent_tasks(self, limit: int) -> list[HubTaskRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM tasks ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        return [hub_task_record(r) for r in rows]

    def pending_tasks(self, pod: str) -> list[HubTaskRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT t.* FROM deliveries d JOIN tasks t ON t.task_id = d.task_id"
                " WHERE d.pod = ? AND d.acked_at IS NULL ORDER BY d.seq",
                (pod,),
            ).fetchall()
        return [hub_task_record(r) for r in rows]

    def pending_task_ids(self, pods: Sequence[str]) -> dict[str, list[str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT d.pod, d.task_id FROM json_each(?) n JOIN deliveries d ON d.pod = n.value"
                " WHERE d.acked_at IS NULL ORDER BY d.seq",
                (json.dumps(list(pods)),),
            ).fetchall()
        return pending_by_pod(rows)

    def ack_deliveries(self, acks: Sequence[tuple[str, str]], *, now: int) -> None:
        with self._lock, self._tx():
            self._db.executemany(
                "UPDATE deliveries SET acked_at = COALESCE(acked_at, ?) WHERE task_id = ? AND pod = ?",
                [(now, task_id, pod) for task_id, pod in acks],
            )

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

    def put_result(
        self, task_id: str, pod: str, envelope: bytes, *, status: str, now: int, refs: Sequence[BlobRefRecord] = ()
    ) -> PutOutcome:
        with self._lock, self._tx():
            self._reference(refs)
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

    def put_round_message(self, message: RoundMessageRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        key = (message.task_id, message.round, message.stage, message.sender)
        with self._lock, self._tx():
            self._reference(refs)
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

    def put_blob(self, blob: BlobRecord, *, owner: str) -> None:
        with self._lock, self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?,?,?)", (blob.sha256, blob.size_bytes, blob.created_at)
            )
            self._db.execute(
                "INSERT INTO blob_owners (sha256, key_id, uploaded_at) VALUES (?,?,?)"
                " ON CONFLICT(sha256, key_id) DO UPDATE SET uploaded_at = excluded.uploaded_at",
                (blob.sha256, owner, blob.created_at),
            )

    def refresh_blob(self, sha256: str, *, owner: str, now: int) -> bool:
        with self._lock, self._tx():
            refreshed = self._db.execute(REFRESH_BLOB_SQL, {"now": now, "sha": sha256, "key": owner}).rowcount
        return refreshed > 0

    def get_blob(self, sha256: str) -> BlobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256, size_bytes, created_at FROM blobs WHERE sha256 = ?", (sha256,)
            ).fetchone()
        return None if row is None else BlobRecord(*row)

    def blob_owned_by(self, sha256: str, key_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM blob_owners o JOIN blobs b ON b.sha256 = o.sha256 WHERE o.sha256 = ? AND o.key_id = ?",
                (sha256, key_id),
            ).fetchone()
        return row is not None

    def blob_usage(self, key_id: str) -> BlobUsage:
        with self._lock:
            size, count = self._db.execute(
                "SELECT COALESCE(SUM(b.size_bytes), 0), COUNT(*) FROM blob_owners o JOIN blobs b ON b.sha256 = o.sha256"
                " WHERE o.key_id = ?",
                (key_id,),
            ).fetchone()
        return BlobUsage(size_bytes=int(size), count=int(count))

    def _reference(self, refs: Sequence[BlobRefRecord]) -> None:
        """Inside a write's transaction (BEGIN IMMEDIATE holds the database's write lock: no collection decides
        meanwhile), reference the blobs ``refs`` name; BlobMissing, which rolls the write back, for one that has
        no record."""
        for ref in refs:
            if self._db.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (ref.sha256,)).fetchone() is None:
                raise BlobMissing(ref.sha256)
        self._db.executemany(
            "INSERT OR IGNORE INTO blob_refs (sha256, kind, task_id, party) VALUES (?,?,?,?)",
            [(r.sha256, r.kind, r.task_id, r.party) for r in refs],
        )

    def may_read_blob(self, sha256: str, *, key_id: str, pod: str | None) -> bool:
        with self._lock:
            row = self._db.execute(MAY_READ_BLOB_SQL, {"sha": sha256, "key": key_id, "pod": pod}).fetchone()
        return bool(row[0])

    def unreferenced_blobs(self, *, uploaded_before: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(UNREFERENCED_SQL + " ORDER BY b.sha256", {"before": uploaded_before}).fetchall()
        return [str(r[0]) for r in rows]

    def delete_blob_if_unreferenced(
        self, sha256: str, *, uploaded_before: int, remove: Callable[[str], None]
    ) -> bool:
        # BEGIN IMMEDIATE holds the database's write lock: an upload's record waits for the bytes' removal.
        with self._lock, self._tx():
            still = self._db.execute(
                UNREFERENCED_SQL + " AND b.sha256 = :sha", {"before": uploaded_before, "sha": sha256}
            ).fetchone()
            if still is None:
                return False
            remove(sha256)
            self._db.execute("DELETE FROM blob_owners WHERE sha256 = ?", (sha256,))
            self._db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
            return True

    def pod_targeted_by(self, pod: str, modeller_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM deliveries d JOIN tasks t ON t.task_id = d.task_id WHERE d.pod = ? AND t.modeller_id = ?"
                " LIMIT 1",
                (pod, modeller_id),
            ).fetchone()
        return row is not None

    # -- registration policy ----------------------------------------------------------------

    def add_enrolment_token(self, token_sha256: str, *, created_at: int, expires_at: int, note: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO enrolment_tokens (token_sha256, created_at, expires_at, note) VALUES (?,?,?,?)",
                (token_sha256, created_at, expires_at, note),
            )

    def consume_enrolment_token(self, token_sha256: str, *, key_id: str, now: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE enrolment_tokens SET used_at = ?, used_by = ?"
                " WHERE token_sha256 = ? AND used_at IS NULL AND expires_at > ?",
                (now, key_id, token_sha256, now),
            )
        return cur.rowcount > 0

    def release_enrolment_token(self, token_sha256: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE enrolment_tokens SET used_at = NULL, used_by = NULL WHERE token_sha256 = ?", (token_sha256,)
            )

    def add_pending_key(self, pending: PendingKey) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO key_approvals (key_id, role, name, requested_at) VALUES (?,?,?,?)",
                (pending.key_id, pending.role, pending.name, pending.requested_at),
            )

    def key_pending(self, key_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM key_approvals WHERE key_id = ? AND approved_at IS NULL", (key_id,)
            ).fetchone()
        return row is not None

    def pending_keys(self) -> list[PendingKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, role, name, requested_at FROM key_approvals WHERE approved_at IS NULL"
                " ORDER BY requested_at, key_id"
            ).fetchall()
        return [PendingKey(key_id=r[0], role=r[1], name=r[2], requested_at=int(r[3])) for r in rows]

    def approve_key(self, key_id: str, *, now: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE key_approvals SET approved_at = ? WHERE key_id = ? AND approved_at IS NULL", (now, key_id)
            )
        return cur.rowcount > 0

    # -- request nonces ---------------------------------------------------------------------

    def claim_nonces(self, claims: Sequence[NonceClaim]) -> set[NonceClaim]:
        """As ``Storage.claim_nonces``, in one transaction."""
        granted: set[NonceClaim] = set()
        with self._lock, self._tx():
            for claim in first_claims(claims):
                if self._db.execute(
                    "INSERT INTO request_nonces (key_id, nonce, stamped_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                    (claim.key_id, claim.nonce, claim.timestamp),
                ).rowcount:
                    granted.add(claim)
        return granted

    def prune_nonces(self, *, stamped_before: int) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM request_nonces WHERE stamped_at < ?", (stamped_before,)).rowcount

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (autocommit connection otherwise)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


# The three ways to read a blob (``Storage.may_read_blob``); a pod's name stands for the key it has now.
# Shared with postgres.py, which turns the ``:name`` placeholders into its own.
MAY_READ_BLOB_SQL = """
SELECT EXISTS (SELECT 1 FROM blob_owners WHERE sha256 = :sha AND key_id = :key)
    OR EXISTS (
        SELECT 1 FROM blob_refs r JOIN tasks t ON t.task_id = r.task_id JOIN pods p ON p.name = r.party
        JOIN blob_owners o ON o.sha256 = r.sha256 AND o.key_id = p.key_id
        WHERE r.sha256 = :sha AND r.kind IN ('result', 'masked') AND t.modeller_id = :key)
    OR (CAST(:pod AS TEXT) IS NOT NULL AND EXISTS (
        SELECT 1 FROM blob_refs r JOIN tasks t ON t.task_id = r.task_id
        JOIN deliveries d ON d.task_id = t.task_id AND d.pod = :pod
        JOIN blob_owners o ON o.sha256 = r.sha256 AND o.key_id = t.modeller_id
        WHERE r.sha256 = :sha AND r.kind = 'weights'))
"""
# An owner uploading a blob again (``Storage.refresh_blob``); shared with postgres.py too.
REFRESH_BLOB_SQL = """
UPDATE blob_owners SET uploaded_at = :now
WHERE sha256 = :sha AND key_id = :key AND EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = blob_owners.sha256)
"""

UNREFERENCED_SQL = """
SELECT b.sha256 FROM blobs b
WHERE NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.sha256 = b.sha256)
  AND COALESCE((SELECT MAX(o.uploaded_at) FROM blob_owners o WHERE o.sha256 = b.sha256), b.created_at) < :before
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an older database up to the current ``user_version``, one step at a time, each in a transaction."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    for target, step in enumerate(_MIGRATIONS, start=1):
        if version >= target:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            db.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _migrate_to_v1(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(models)")}
    if "public" not in columns:
        # Models published before sharing existed were readable by every caller; keep that for them.
        db.execute("ALTER TABLE models ADD COLUMN public INTEGER NOT NULL DEFAULT 1")
        db.execute("UPDATE models SET public = 1")
    _backfill_blob_owners(db)


def _backfill_blob_owners(db: sqlite3.Connection) -> None:
    """Owners and references for blobs stored before the hub kept them, read from what names them."""
    pod_keys = dict(db.execute("SELECT name, key_id FROM pods").fetchall())
    refs: list[tuple[str, str, str, str]] = []
    owners: list[tuple[str, str]] = []
    for task_id, modeller_id, envelope in db.execute("SELECT task_id, modeller_id, envelope FROM tasks"):
        weights = _payload(envelope).get("weights")
        if isinstance(weights, dict) and isinstance(weights.get("sha256"), str):
            refs.append((weights["sha256"], "weights", task_id, ""))
            owners.append((weights["sha256"], modeller_id))
    named = [("result", r) for r in db.execute("SELECT task_id, pod, envelope FROM results")]
    named += [
        ("masked", r) for r in db.execute("SELECT task_id, sender, envelope FROM round_messages WHERE stage = 'masked'")
    ]
    for kind, (task_id, pod, envelope) in named:
        blob = _payload(envelope).get("blob")
        if isinstance(blob, dict) and isinstance(blob.get("sha256"), str):
            refs.append((blob["sha256"], kind, task_id, pod))
            if pod in pod_keys:
                owners.append((blob["sha256"], pod_keys[pod]))
    for name, version, weights_sha256, owner in db.execute(
        "SELECT name, version, weights_sha256, owner FROM models WHERE weights_sha256 IS NOT NULL"
    ):
        refs.append((weights_sha256, "model", f"{name}@{version}", owner))
        owners.append((weights_sha256, owner))
    db.executemany("INSERT OR IGNORE INTO blob_refs (sha256, kind, task_id, party) VALUES (?,?,?,?)", refs)
    db.executemany(
        "INSERT OR IGNORE INTO blob_owners (sha256, key_id, uploaded_at)"
        " SELECT sha256, ?, created_at FROM blobs WHERE sha256 = ?",
        [(key_id, sha) for sha, key_id in owners],
    )


def _payload(envelope: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(bytes(envelope))["payload"]
    except (ValueError, KeyError, TypeError):
        return {}
    return payload if isinstance(payload, dict) else {}


_MIGRATIONS = (_migrate_to_v1,)
