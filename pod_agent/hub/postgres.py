"""PostgreSQL implementation of the hub's ``Storage`` and ``Cluster``, for several hub processes on one database.

Owns the PostgreSQL table layout, its migrations, the transactions, and what hub processes
sharing the database tell each other (``PostgresCluster``: wake-ups by LISTEN/NOTIFY). Request
nonces are claimed in a table, so a request replayed to another process is refused.

Driver: psycopg 3 with ``psycopg_pool.ConnectionPool``, not asyncpg. ``Storage`` is a synchronous
protocol that the server runs through ``asyncio.to_thread`` (SQLite's sqlite3 is synchronous), so a
synchronous driver with a thread-safe pool implements it method for method, each method one
statement on an autocommit connection, or one transaction (``_tx``) where it takes several;
asyncpg would need a second, async ``Storage`` or a loop per thread. psycopg 3 also gives async
connections with ``notifies()`` for the LISTEN side, so one driver covers both, and it ships
binary wheels (``psycopg[binary]``) with libpq inside.

Concurrency: every "insert unless present, else compare" is ``INSERT ... ON CONFLICT DO NOTHING``
followed by a read of the winner, so two processes storing the same task, result or round message at
once get one "stored" and one "duplicate" (or a conflict), never two rows. A pod's registration is one
conditional upsert (its name's row changes only if it holds the same key; the key's unique index
refuses it on another name). Delivery order is an identity column, not ``MAX(seq) + 1``.

Migrations: ``hub_schema_version`` holds the version; ``_MIGRATIONS`` are applied forward in order,
each in its own transaction, under an advisory lock so processes starting together migrate once.
The tables live in the connection's ``search_path`` schema (``?options=-csearch_path%3Dhub`` in the
URL puts a hub in a schema of its own; the tests give each hub one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from pod_agent.errors import HubError
from pod_agent.hub.fanout import fanout_key, fanout_task
from pod_agent.hub.sqlite import MAY_READ_BLOB_SQL, REFRESH_BLOB_SQL, UNREFERENCED_SQL
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

_log = logging.getLogger(__name__)

# Advisory lock key (one 64-bit space per database) that one migrating process holds.
_LOCK_MIGRATE = 0x706F645F6D696772
# The first of the two 32-bit keys of a blob's advisory lock (a space apart from the one-key locks), the
# second the hash of its sha256: the transaction recording, refreshing or forgetting a blob holds it, so hub
# processes change one blob's record, and a collection its bytes, one at a time.
_LOCK_BLOB_CLASS = 0x626C6F62
# A registration that finds its name's or key's holder gone by the time it looks it up tries again.
_UPSERT_TRIES = 3
# Enough for the default thread pool of asyncio.to_thread on a few cores; PostgreSQL's default
# max_connections (100) leaves room for several hub processes.
DEFAULT_POOL_SIZE = 10
_POOL_WAIT_S = 30.0
_CONNECT_TIMEOUT_S = 10
# Pods' heartbeats (``touch_pod``) are written together this often; what other processes show lags by as much.
TOUCH_WRITE_S = 0.5

_POD_COLUMNS = (
    "name, key_id, public_key, schema, schema_hash, row_count, sandbox_level, heartbeat_s, registered_at, last_seen"
)
_KEY_STANDINGS = key_standings_query(_POD_COLUMNS, "(SELECT DISTINCT key_id FROM unnest(%s::text[]) AS u(key_id)) q")
_UPSERT_POD = (
    f"INSERT INTO pods ({_POD_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key, schema = excluded.schema,"
    " schema_hash = excluded.schema_hash, row_count = excluded.row_count, sandbox_level = excluded.sandbox_level,"
    " heartbeat_s = excluded.heartbeat_s, registered_at = excluded.registered_at, last_seen = excluded.last_seen"
    " WHERE pods.key_id = excluded.key_id RETURNING 1"
)
_MODEL_COLUMNS = "name, version, style, class_name, source, sha256, weights_sha256, owner, created_at, public"
_TASK_COLUMNS = "task_id, modeller_id, envelope, pods, created_at"

_SCHEMA_V1 = """
CREATE TABLE pods (
    name TEXT PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, public_key TEXT NOT NULL,
    schema TEXT NOT NULL, schema_hash TEXT NOT NULL, row_count BIGINT NOT NULL,
    sandbox_level TEXT NOT NULL, heartbeat_s DOUBLE PRECISION NOT NULL, registered_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE TABLE modellers (
    key_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, name TEXT NOT NULL, registered_at BIGINT NOT NULL
);
CREATE TABLE models (
    name TEXT NOT NULL, version TEXT NOT NULL, style TEXT NOT NULL, class_name TEXT, source TEXT NOT NULL,
    sha256 TEXT NOT NULL, weights_sha256 TEXT, owner TEXT NOT NULL, created_at BIGINT NOT NULL,
    public BOOLEAN NOT NULL, PRIMARY KEY (name, version)
);
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY, modeller_id TEXT NOT NULL, envelope BYTEA NOT NULL, pods TEXT NOT NULL,
    created_at BIGINT NOT NULL, seq BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX tasks_recent ON tasks (created_at DESC, seq DESC);
CREATE TABLE deliveries (
    task_id TEXT NOT NULL REFERENCES tasks(task_id), pod TEXT NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    acked_at BIGINT, refusal TEXT, result_status TEXT, progress TEXT,
    PRIMARY KEY (task_id, pod)
);
CREATE INDEX deliveries_pending ON deliveries (pod, seq) WHERE acked_at IS NULL;
CREATE INDEX deliveries_by_pod ON deliveries (pod, task_id);
CREATE TABLE results (
    task_id TEXT NOT NULL, pod TEXT NOT NULL, envelope BYTEA NOT NULL, received_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, pod)
);
CREATE TABLE round_messages (
    task_id TEXT NOT NULL, round INTEGER NOT NULL, stage TEXT NOT NULL, sender TEXT NOT NULL,
    envelope BYTEA NOT NULL, received_at BIGINT NOT NULL, seq BIGINT GENERATED ALWAYS AS IDENTITY,
    UNIQUE (task_id, round, stage, sender)
);
CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, size_bytes BIGINT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE blob_owners (
    sha256 TEXT NOT NULL, key_id TEXT NOT NULL, uploaded_at BIGINT NOT NULL, PRIMARY KEY (sha256, key_id)
);
CREATE INDEX blob_owners_by_key ON blob_owners (key_id);
CREATE TABLE blob_refs (
    sha256 TEXT NOT NULL, kind TEXT NOT NULL, task_id TEXT NOT NULL, party TEXT NOT NULL,
    PRIMARY KEY (sha256, kind, task_id, party)
);
CREATE TABLE enrolment_tokens (
    token_sha256 TEXT PRIMARY KEY, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
    used_at BIGINT, used_by TEXT, note TEXT NOT NULL
);
CREATE TABLE key_approvals (
    key_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, requested_at BIGINT NOT NULL,
    approved_at BIGINT
);
CREATE TABLE pod_rotations (
    pod TEXT NOT NULL, statement BYTEA NOT NULL, received_at BIGINT NOT NULL, seq BIGINT GENERATED ALWAYS AS IDENTITY,
    UNIQUE (pod, statement)
);
CREATE TABLE request_nonces (
    key_id TEXT NOT NULL, nonce TEXT NOT NULL, stamped_at BIGINT NOT NULL, PRIMARY KEY (key_id, nonce)
);
CREATE INDEX request_nonces_by_time ON request_nonces (stamped_at);
"""

# The deliveries' foreign key checked each new delivery against its task by a trigger of its own, a third of the
# insert of a 10,000-pod cohort, which every fan-out waits for; the task and its deliveries are written by one
# statement and no task is ever deleted, so it guarded nothing (SQLite's is not enforced either).
_SCHEMA_V2 = "ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_task_id_fkey"

# Version n is reached by applying _MIGRATIONS[n - 1]; append, never edit a released step.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)

def _named(query: str) -> str:
    """SQLite's ``:name`` placeholders as psycopg's ``%(name)s`` (the blob queries are written once)."""
    return re.sub(r"(?<!:):(\w+)", r"%(\1)s", query)


_MAY_READ_BLOB = _named(MAY_READ_BLOB_SQL)
_UNREFERENCED = _named(UNREFERENCED_SQL)
_REFRESH_BLOB = _named(REFRESH_BLOB_SQL)


def _lock_blob(conn: psycopg.Connection[Any], sha256: str) -> None:
    """Hold the blob's advisory lock until the transaction ends (``_LOCK_BLOB_CLASS``)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_BLOB_CLASS, sha256))


def _reference_blobs(conn: psycopg.Connection[Any], refs: Sequence[BlobRefRecord]) -> None:
    """Inside a write's transaction, reference the blobs ``refs`` name, each found recorded under its lock (so after
    any collection of it that decided first, and before any that decides later); BlobMissing, which rolls the write
    back, for one that has no record. Locked in one order (by sha256): two writes naming the same blobs never wait
    on each other in a cycle."""
    for sha256 in sorted({ref.sha256 for ref in refs}):
        _lock_blob(conn, sha256)
        if conn.execute("SELECT 1 FROM blobs WHERE sha256 = %s", (sha256,)).fetchone() is None:
            raise BlobMissing(sha256)
    for ref in refs:
        conn.execute(
            "INSERT INTO blob_refs (sha256, kind, task_id, party) VALUES (%s,%s,%s,%s) ON CONFLICT DO NOTHING",
            (ref.sha256, ref.kind, ref.task_id, ref.party),
        )


def redacted(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparseable PostgreSQL URL)"
    where = info.get("host") or "localhost"
    return f"postgresql://{info.get('user') or ''}@{where}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


class PostgresStorage:
    """``Storage`` on a psycopg connection pool; thread-safe (each call takes a pooled connection)."""

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.url = url
        try:
            # One plain connection first: an unreachable server is reported at once, not after a pool's wait.
            with psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT_S, autocommit=True) as conn:
                self.schema = str(_one(conn, "SELECT current_schema()")[0])
                _migrate(conn)
            # Autocommit: most calls are one statement, and a transaction around each would cost two more
            # round trips (BEGIN, COMMIT); the calls of several statements open one (``_tx``).
            self._pool = ConnectionPool(
                url, min_size=1, max_size=pool_size, open=True, timeout=_POOL_WAIT_S, name="pod-agent-hub",
                kwargs={"autocommit": True},
            )
        except psycopg.Error as exc:
            raise HubError(
                f"hub database {redacted(url)} cannot be opened: {exc}; check that PostgreSQL runs there, the "
                "database exists and the user may create tables in its schema"
            ) from exc
        self._touches: dict[str, int] = {}
        self._touch_lock = threading.Lock()
        self._closing = threading.Event()
        self._toucher = threading.Thread(
            target=self._write_touches_periodically, name="hub-pod-touches", daemon=True
        )
        self._toucher.start()
        # (channel, payload prefix) on which each new task is announced in its own transaction (``announce_tasks_on``).
        self._task_announcement: tuple[str, str] | None = None

    def announce_tasks_on(self, channel: str, prefix: str) -> None:
        """NOTIFY ``prefix`` and each new task's ``fanout_key`` on ``channel`` in the transaction that stores the
        task: the other hub processes hear of it with its commit, even when this process dies right after (a
        wake-up sent after the commit died with it, and their pods waited for their next quiet re-read)."""
        self._task_announcement = (channel, prefix)

    def close(self) -> None:
        self._closing.set()
        self._toucher.join()
        with contextlib.suppress(psycopg.Error):
            self._write_touches()
        self._pool.close()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit: one statement, one round trip."""
        with self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in a transaction, committed at the end (rolled back on an exception)."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(query, params).fetchall()

    def _first(self, query: str, params: Any = None) -> tuple[Any, ...] | None:
        with self._conn() as conn:
            return conn.execute(query, params).fetchone()

    def _count(self, query: str, params: Any = None) -> int:
        with self._conn() as conn:
            return conn.execute(query, params).rowcount

    # -- pods -------------------------------------------------------------------------------

    def upsert_pod(self, pod: PodRecord) -> None:
        values = (
            pod.name, pod.key_id, pod.public_key, json.dumps(pod.schema), pod.schema_hash, pod.row_count,
            pod.sandbox_level, pod.heartbeat_s, pod.registered_at, pod.last_seen,
        )
        # One statement, no lock: the name's row is updated only if it holds the same key; another key on the
        # name leaves it alone (no row returned), and the key on another name breaks its unique index.
        # Between that and the look-up naming the holder, the holder may be released: then try again.
        for _ in range(_UPSERT_TRIES):
            try:
                updated = self._first(_UPSERT_POD, values)
            except psycopg.errors.UniqueViolation:
                other = self._first("SELECT name FROM pods WHERE key_id = %s", (pod.key_id,))
                if other is not None:
                    raise StorageConflict(
                        f"key {pod.key_id[:12]}... is already registered as pod {other[0]!r}; one key per pod"
                    ) from None
                continue
            if updated is not None:
                return
            held = self._first("SELECT key_id FROM pods WHERE name = %s", (pod.name,))
            if held is not None:
                raise StorageConflict(
                    f"pod name {pod.name!r} is registered to another key ({held[0][:12]}...); "
                    f"choose another pod.name, or (if this pod was re-keyed) the hub operator releases the name "
                    f"with `pod-agent hub release-pod --db HUB_DB {pod.name}`"
                )
        raise HubError(f"pod {pod.name!r}: its registration raced with others {_UPSERT_TRIES} times; register again")

    def get_pod(self, name: str) -> PodRecord | None:
        self._write_touches()
        row = self._first(f"SELECT {_POD_COLUMNS} FROM pods WHERE name = %s", (name,))
        return None if row is None else pod_record(row)

    def pod_by_key(self, key_id: str) -> PodRecord | None:
        self._write_touches()
        row = self._first(f"SELECT {_POD_COLUMNS} FROM pods WHERE key_id = %s", (key_id,))
        return None if row is None else pod_record(row)

    def key_standings(self, key_ids: Sequence[str]) -> dict[str, KeyStanding]:
        # No _write_touches first: a signer's last_seen decides nothing, and a reconnecting herd's every
        # handshake would write the touches its predecessors queued.
        return key_standings(key_ids, self._rows(_KEY_STANDINGS, (list(key_ids),)))

    def list_pods(self) -> list[PodRecord]:
        self._write_touches()
        return [pod_record(r) for r in self._rows(f"SELECT {_POD_COLUMNS} FROM pods ORDER BY name")]

    def admitted(self, names: Sequence[str]) -> set[str]:
        rows = self._rows(
            "SELECT p.name FROM pods p JOIN unnest(%s::text[]) AS n(name) ON p.name = n.name WHERE NOT EXISTS"
            " (SELECT 1 FROM key_approvals k WHERE k.key_id = p.key_id AND k.approved_at IS NULL)",
            (list(names),),
        )
        return {str(r[0]) for r in rows}

    def touch_pod(self, name: str, *, now: int) -> None:
        """Noted here and written with the others within ``TOUCH_WRITE_S`` (or before this process reads a pod):
        every pod's heartbeat a round trip of its own was most of a fan-out's database traffic."""
        with self._touch_lock:
            self._touches[name] = max(now, self._touches.get(name, now))

    def touch_pods(self, seen: Mapping[str, int]) -> None:
        with self._touch_lock:
            for name, now in seen.items():
                self._touches[name] = max(now, self._touches.get(name, now))

    def _write_touches(self) -> None:
        with self._touch_lock:
            touches, self._touches = self._touches, {}
        if touches:
            self._count(
                "UPDATE pods SET last_seen = GREATEST(pods.last_seen, t.seen)"
                " FROM unnest(%s::text[], %s::bigint[]) AS t(name, seen) WHERE pods.name = t.name",
                (list(touches), list(touches.values())),
            )

    def _write_touches_periodically(self) -> None:
        while not self._closing.wait(TOUCH_WRITE_S):
            try:
                self._write_touches()
            except psycopg.Error as exc:
                # Those touches are lost; the pods' next heartbeats bring them again.
                _log.warning("cannot record pods' last heartbeat: %s; retrying in %g s", exc, TOUCH_WRITE_S)

    def add_pod_rotation(self, pod: str, statement: bytes, *, now: int) -> None:
        self._count(
            "INSERT INTO pod_rotations (pod, statement, received_at) VALUES (%s,%s,%s) ON CONFLICT DO NOTHING",
            (pod, statement, now),
        )

    def pod_rotations(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for pod, statement in self._rows("SELECT pod, statement FROM pod_rotations ORDER BY seq"):
            out.setdefault(str(pod), []).append(bytes(statement))
        return out

    def release_pod(self, name: str) -> bool:
        return self._count("DELETE FROM pods WHERE name = %s", (name,)) > 0

    # -- modellers and models ---------------------------------------------------------------

    def upsert_modeller(self, modeller: ModellerRecord) -> None:
        self._count(
            "INSERT INTO modellers (key_id, public_key, name, registered_at) VALUES (%s,%s,%s,%s)"
            " ON CONFLICT (key_id) DO UPDATE SET name = excluded.name",
            (modeller.key_id, modeller.public_key, modeller.name, modeller.registered_at),
        )

    def get_modeller(self, key_id: str) -> ModellerRecord | None:
        row = self._first(
            "SELECT key_id, public_key, name, registered_at FROM modellers WHERE key_id = %s", (key_id,)
        )
        return None if row is None else ModellerRecord(row[0], row[1], row[2], int(row[3]))

    def put_model(self, model: ModelRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        with self._tx() as conn:
            _reference_blobs(conn, refs)
            inserted = conn.execute(
                f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT (name, version) DO NOTHING",
                (
                    model.name, model.version, model.style, model.class_name, model.source, model.sha256,
                    model.weights_sha256, model.owner, model.created_at, model.public,
                ),
            ).rowcount
            if inserted:
                return "stored"
            row = _one(
                conn, "SELECT sha256, weights_sha256 FROM models WHERE name = %s AND version = %s",
                (model.name, model.version),
            )
            if (row[0], row[1]) != (model.sha256, model.weights_sha256):
                raise StorageConflict(
                    f"model {model.name}@{model.version} already exists with other content; publish a new version"
                )
            # The owner's latest word on sharing holds; anyone else's changes nothing.
            conn.execute(
                "UPDATE models SET public = %s WHERE name = %s AND version = %s AND owner = %s",
                (model.public, model.name, model.version, model.owner),
            )
            return "duplicate"

    def get_model(self, name: str, version: str) -> ModelRecord | None:
        row = self._first(f"SELECT {_MODEL_COLUMNS} FROM models WHERE name = %s AND version = %s", (name, version))
        if row is None:
            return None
        name_, version_, style, class_name, source, sha256, weights_sha256, owner, created_at, public = row
        return ModelRecord(
            name=name_, version=version_, style=style, class_name=class_name, source=source, sha256=sha256,
            weights_sha256=weights_sha256, owner=owner, created_at=int(created_at), public=bool(public),
        )

    # -- tasks and deliveries ---------------------------------------------------------------

    def add_task(self, task: HubTaskRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        # One statement, so one round trip and its own transaction: the task, a delivery per pod (unnest keeps the
        # pods' order, and so the identity's) and, where set, its announcement, whose NOTIFY goes with the commit.
        # A transaction of three statements took five round trips, each a wait for the server's and this
        # thread's turn on a busy host, between a submission and its first push. A task that pins blobs is
        # stored in a transaction with their references (``_reference_blobs``), its conflict decided inside it.
        channel, payload = self._task_announcement or ("", "")
        with (self._tx() if refs else self._conn()) as conn:
            _reference_blobs(conn, refs)
            stored = conn.execute(
                f"WITH task AS (INSERT INTO tasks ({_TASK_COLUMNS}) VALUES (%s,%s,%s,%s,%s)"
                " ON CONFLICT (task_id) DO NOTHING RETURNING task_id),"
                " cohort AS (INSERT INTO deliveries (task_id, pod) SELECT task.task_id, p.pod"
                " FROM task, unnest(%s::text[]) WITH ORDINALITY AS p(pod, i) ORDER BY p.i)"
                " SELECT CASE WHEN %s THEN pg_notify(%s, %s) END FROM task",
                (
                    task.task_id, task.modeller_id, task.envelope, json.dumps(list(task.pods)), task.created_at,
                    list(task.pods), bool(channel), channel, payload + fanout_key(task.task_id),
                ),
            ).fetchone()
            if stored is not None:
                return "stored"
            row = _one(conn, "SELECT envelope FROM tasks WHERE task_id = %s", (task.task_id,))
            if bytes(row[0]) == task.envelope:
                return "duplicate"
            raise StorageConflict(f"task {task.task_id} already exists with another envelope; use a new task_id")

    def get_task(self, task_id: str) -> HubTaskRecord | None:
        row = self._first(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = %s", (task_id,))
        return None if row is None else hub_task_record(row)

    def cohort_registrations(self, task_id: str) -> list[tuple[str, str, str]]:
        rows = self._rows(
            "SELECT p.name, p.schema_hash, p.key_id FROM deliveries d JOIN pods p ON p.name = d.pod"
            " WHERE d.task_id = %s",
            (task_id,),
        )
        return [(str(name), str(schema_hash), str(key_id)) for name, schema_hash, key_id in rows]

    def recent_tasks(self, limit: int) -> list[HubTaskRecord]:
        rows = self._rows(
            f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY created_at DESC, seq DESC LIMIT %s", (limit,)
        )
        return [hub_task_record(r) for r in rows]

    def pending_tasks(self, pod: str) -> list[HubTaskRecord]:
        rows = self._rows(
            "SELECT t.task_id, t.modeller_id, t.envelope, t.pods, t.created_at FROM deliveries d"
            " JOIN tasks t ON t.task_id = d.task_id WHERE d.pod = %s AND d.acked_at IS NULL ORDER BY d.seq",
            (pod,),
        )
        return [hub_task_record(r) for r in rows]

    def ack_delivery(self, task_id: str, pod: str, *, now: int) -> bool:
        return self._count(
            "UPDATE deliveries SET acked_at = COALESCE(acked_at, %s) WHERE task_id = %s AND pod = %s",
            (now, task_id, pod),
        ) > 0

    def pending_task_ids(self, pods: Sequence[str]) -> dict[str, list[str]]:
        rows = self._rows(
            "SELECT pod, task_id FROM deliveries WHERE pod = ANY(%s) AND acked_at IS NULL ORDER BY seq", (list(pods),)
        )
        return pending_by_pod(rows)

    def ack_deliveries(self, acks: Sequence[tuple[str, str]], *, now: int) -> None:
        if acks:  # one statement, one round trip, for a fan-out's acknowledgements
            self._count(
                "UPDATE deliveries SET acked_at = COALESCE(deliveries.acked_at, %s)"
                " FROM unnest(%s::text[], %s::text[]) AS a(task_id, pod)"
                " WHERE deliveries.task_id = a.task_id AND deliveries.pod = a.pod",
                (now, [task_id for task_id, _ in acks], [pod for _, pod in acks]),
            )

    def record_refusal(self, task_id: str, pod: str, code: str, *, now: int) -> bool:
        return self._count(
            "UPDATE deliveries SET refusal = %s, acked_at = COALESCE(acked_at, %s) WHERE task_id = %s AND pod = %s",
            (code, now, task_id, pod),
        ) > 0

    def record_progress(self, task_id: str, pod: str, event: dict[str, object]) -> bool:
        return self._count(
            "UPDATE deliveries SET progress = %s WHERE task_id = %s AND pod = %s", (json.dumps(event), task_id, pod)
        ) > 0

    def deliveries(self, task_id: str) -> list[DeliveryRecord]:
        rows = self._rows(
            "SELECT task_id, pod, acked_at, refusal, result_status, progress FROM deliveries"
            " WHERE task_id = %s ORDER BY pod",
            (task_id,),
        )
        return [
            DeliveryRecord(
                task_id=r[0], pod=r[1], acked_at=None if r[2] is None else int(r[2]), refusal=r[3],
                result_status=r[4], progress=None if r[5] is None else json.loads(r[5]),
            )
            for r in rows
        ]

    # -- results ----------------------------------------------------------------------------

    def put_result(
        self, task_id: str, pod: str, envelope: bytes, *, status: str, now: int, refs: Sequence[BlobRefRecord] = ()
    ) -> PutOutcome:
        with self._tx() as conn:
            _reference_blobs(conn, refs)
            inserted = conn.execute(
                "INSERT INTO results (task_id, pod, envelope, received_at) VALUES (%s,%s,%s,%s)"
                " ON CONFLICT (task_id, pod) DO NOTHING",
                (task_id, pod, envelope, now),
            ).rowcount
            if not inserted:
                row = _one(conn, "SELECT envelope FROM results WHERE task_id = %s AND pod = %s", (task_id, pod))
                if bytes(row[0]) == envelope:
                    return "duplicate"
                raise StorageConflict(
                    f"pod {pod!r} already delivered a different result for task {task_id}; results are immutable"
                )
            conn.execute(
                "UPDATE deliveries SET result_status = %s, acked_at = COALESCE(acked_at, %s)"
                " WHERE task_id = %s AND pod = %s",
                (status, now, task_id, pod),
            )
            return "stored"

    def results(self, task_id: str) -> list[ResultRecord]:
        rows = self._rows(
            "SELECT task_id, pod, envelope, received_at FROM results WHERE task_id = %s ORDER BY pod", (task_id,)
        )
        return [ResultRecord(task_id=r[0], pod=r[1], envelope=bytes(r[2]), received_at=int(r[3])) for r in rows]

    # -- secure rounds ----------------------------------------------------------------------

    def put_round_message(self, message: RoundMessageRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        key = (message.task_id, message.round, message.stage, message.sender)
        with self._tx() as conn:
            _reference_blobs(conn, refs)
            inserted = conn.execute(
                "INSERT INTO round_messages (task_id, round, stage, sender, envelope, received_at)"
                " VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (task_id, round, stage, sender) DO NOTHING",
                (*key, message.envelope, message.received_at),
            ).rowcount
            if inserted:
                return "stored"
            row = _one(
                conn,
                "SELECT envelope FROM round_messages WHERE task_id = %s AND round = %s AND stage = %s AND sender = %s",
                key,
            )
            if bytes(row[0]) == message.envelope:
                return "duplicate"
            raise StorageConflict(
                f"{message.sender!r} already sent a different {message.stage} message for task {message.task_id} "
                f"round {message.round}; one message per sender and stage"
            )

    def round_messages(self, task_id: str, round_index: int, stage: str) -> list[RoundMessageRecord]:
        rows = self._rows(
            "SELECT task_id, round, stage, sender, envelope, received_at FROM round_messages"
            " WHERE task_id = %s AND round = %s AND stage = %s ORDER BY seq",
            (task_id, round_index, stage),
        )
        return [
            RoundMessageRecord(
                task_id=r[0], round=int(r[1]), stage=r[2], sender=r[3], envelope=bytes(r[4]), received_at=int(r[5])
            )
            for r in rows
        ]

    # -- blobs ------------------------------------------------------------------------------

    def put_blob(self, blob: BlobRecord, *, owner: str) -> None:
        with self._tx() as conn:
            _lock_blob(conn, blob.sha256)
            conn.execute(
                "INSERT INTO blobs (sha256, size_bytes, created_at) VALUES (%s,%s,%s) ON CONFLICT DO NOTHING",
                (blob.sha256, blob.size_bytes, blob.created_at),
            )
            conn.execute(
                "INSERT INTO blob_owners (sha256, key_id, uploaded_at) VALUES (%s,%s,%s)"
                " ON CONFLICT (sha256, key_id) DO UPDATE SET uploaded_at = excluded.uploaded_at",
                (blob.sha256, owner, blob.created_at),
            )

    def refresh_blob(self, sha256: str, *, owner: str, now: int) -> bool:
        with self._tx() as conn:
            _lock_blob(conn, sha256)
            return conn.execute(_REFRESH_BLOB, {"now": now, "sha": sha256, "key": owner}).rowcount > 0

    def get_blob(self, sha256: str) -> BlobRecord | None:
        row = self._first("SELECT sha256, size_bytes, created_at FROM blobs WHERE sha256 = %s", (sha256,))
        return None if row is None else BlobRecord(row[0], int(row[1]), int(row[2]))

    def blob_owned_by(self, sha256: str, key_id: str) -> bool:
        return self._first(
            "SELECT 1 FROM blob_owners o JOIN blobs b ON b.sha256 = o.sha256 WHERE o.sha256 = %s AND o.key_id = %s",
            (sha256, key_id),
        ) is not None

    def blob_usage(self, key_id: str) -> BlobUsage:
        row = _present(self._first(
            "SELECT COALESCE(SUM(b.size_bytes), 0), COUNT(*) FROM blob_owners o JOIN blobs b ON b.sha256 = o.sha256"
            " WHERE o.key_id = %s",
            (key_id,),
        ))
        return BlobUsage(size_bytes=int(row[0]), count=int(row[1]))

    def may_read_blob(self, sha256: str, *, key_id: str, pod: str | None) -> bool:
        return bool(_present(self._first(_MAY_READ_BLOB, {"sha": sha256, "key": key_id, "pod": pod}))[0])

    def unreferenced_blobs(self, *, uploaded_before: int) -> list[str]:
        return [str(r[0]) for r in self._rows(_UNREFERENCED + " ORDER BY b.sha256", {"before": uploaded_before})]

    def delete_blob_if_unreferenced(
        self, sha256: str, *, uploaded_before: int, remove: Callable[[str], None]
    ) -> bool:
        with self._tx() as conn:
            _lock_blob(conn, sha256)
            still = conn.execute(_UNREFERENCED + " AND b.sha256 = %(sha)s", {"before": uploaded_before, "sha": sha256})
            if still.fetchone() is None:
                return False
            remove(sha256)
            conn.execute("DELETE FROM blob_owners WHERE sha256 = %s", (sha256,))
            conn.execute("DELETE FROM blobs WHERE sha256 = %s", (sha256,))
            return True

    def pod_targeted_by(self, pod: str, modeller_id: str) -> bool:
        return self._first(
            "SELECT 1 FROM deliveries d JOIN tasks t ON t.task_id = d.task_id"
            " WHERE d.pod = %s AND t.modeller_id = %s LIMIT 1",
            (pod, modeller_id),
        ) is not None

    # -- registration policy ----------------------------------------------------------------

    def add_enrolment_token(self, token_sha256: str, *, created_at: int, expires_at: int, note: str) -> None:
        self._count(
            "INSERT INTO enrolment_tokens (token_sha256, created_at, expires_at, note) VALUES (%s,%s,%s,%s)",
            (token_sha256, created_at, expires_at, note),
        )

    def consume_enrolment_token(self, token_sha256: str, *, key_id: str, now: int) -> bool:
        return self._count(
            "UPDATE enrolment_tokens SET used_at = %s, used_by = %s"
            " WHERE token_sha256 = %s AND used_at IS NULL AND expires_at > %s",
            (now, key_id, token_sha256, now),
        ) > 0

    def release_enrolment_token(self, token_sha256: str) -> None:
        self._count(
            "UPDATE enrolment_tokens SET used_at = NULL, used_by = NULL WHERE token_sha256 = %s", (token_sha256,)
        )

    def add_pending_key(self, pending: PendingKey) -> None:
        self._count(
            "INSERT INTO key_approvals (key_id, role, name, requested_at) VALUES (%s,%s,%s,%s) ON CONFLICT DO NOTHING",
            (pending.key_id, pending.role, pending.name, pending.requested_at),
        )

    def key_pending(self, key_id: str) -> bool:
        return self._first(
            "SELECT 1 FROM key_approvals WHERE key_id = %s AND approved_at IS NULL", (key_id,)
        ) is not None

    def pending_keys(self) -> list[PendingKey]:
        rows = self._rows(
            "SELECT key_id, role, name, requested_at FROM key_approvals WHERE approved_at IS NULL"
            " ORDER BY requested_at, key_id"
        )
        return [PendingKey(key_id=r[0], role=r[1], name=r[2], requested_at=int(r[3])) for r in rows]

    def approve_key(self, key_id: str, *, now: int) -> bool:
        return self._count(
            "UPDATE key_approvals SET approved_at = %s WHERE key_id = %s AND approved_at IS NULL", (now, key_id)
        ) > 0

    # -- request nonces ---------------------------------------------------------------------

    def claim_nonces(self, claims: Sequence[NonceClaim]) -> set[NonceClaim]:
        """As ``Storage.claim_nonces``, in one statement."""
        firsts = first_claims(claims)
        if not firsts:
            return set()
        rows = self._rows(
            "INSERT INTO request_nonces (key_id, nonce, stamped_at)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])"
            " ON CONFLICT DO NOTHING RETURNING key_id, nonce, stamped_at",
            ([c.key_id for c in firsts], [c.nonce for c in firsts], [c.timestamp for c in firsts]),
        )
        return {NonceClaim(str(key_id), str(nonce), int(stamped)) for key_id, nonce, stamped in rows}

    def prune_nonces(self, *, stamped_before: int) -> int:
        return self._count("DELETE FROM request_nonces WHERE stamped_at < %s", (stamped_before,))

    # -- what hub processes share besides storage (``PostgresCluster``) ---------------------

    def notify(self, channel: str, keys: list[str]) -> None:
        with self._conn() as conn:
            conn.execute("SELECT pg_notify(%s, k) FROM unnest(%s::text[]) AS k", (channel, keys))


class PostgresCluster:
    """``Cluster`` for hub processes sharing one PostgreSQL database.

    Wake-ups (a task for a pod, a result for a waiting modeller, a secure-round message) are
    NOTIFY'd on a channel named for the storage's schema, each payload prefixed with this
    process's id so it skips its own; a listening connection per process wakes its local waiters.
    Notifications are sent after the write they announce has committed, so a woken waiter reads
    it; a new task's is sent by the storage in the task's own transaction, so it is not lost with a
    process that dies right after storing it. A lost listening connection is re-opened after a
    pause, and every local waiter is woken then, since notifications sent meanwhile are gone
    (waiters re-read the database).

    Per-key request rates stay per process: a key may send N times the rate to N processes, which
    bounds it as before, N times looser; quotas on stored bytes are in the database and shared.
    """

    shared = True  # the server runs its per-pod calls in parallel, not in one batch after another

    def __init__(self, storage: PostgresStorage) -> None:
        self._storage = storage
        self._origin = uuid.uuid4().hex[:12]
        self._channel = f"pod_agent_hub:{storage.schema}"[:63]
        storage.announce_tasks_on(self._channel, f"{self._origin}|")
        self._outbox: list[str] = []
        self._sending: asyncio.Task[None] | None = None

    def publish(self, key: str) -> None:
        """Queue ``key`` for the other processes; queued keys go out together, in one statement. A task's
        ``fanout_key`` is not: the storage sent it with the task's commit (``PostgresStorage.announce_tasks_on``)."""
        if fanout_task(key) is not None:
            return
        self._outbox.append(f"{self._origin}|{key}")
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send(), name="hub-notify")

    async def _send(self) -> None:
        while self._outbox:
            keys, self._outbox = self._outbox, []
            try:
                await asyncio.to_thread(self._storage.notify, self._channel, keys)
            except (psycopg.Error, PoolTimeout) as exc:
                # Waiters elsewhere still re-read on their long-poll timeout (at most 30 s).
                _log.warning("cannot notify other hub processes of %d wake-ups: %s", len(keys), exc)

    async def run(self, wake: Callable[[str], None], wake_all: Callable[[], None]) -> None:
        """Deliver the other processes' wake-ups to ``wake`` until cancelled."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._storage.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    wake_all()  # anything sent before LISTEN took effect is read again
                    async for note in conn.notifies():
                        origin, _, key = note.payload.partition("|")
                        if origin != self._origin:
                            wake(key)
            except psycopg.Error as exc:
                _log.warning("lost the hub's LISTEN connection (%s); reconnecting in 1 s", exc)
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._sending is not None:
            await asyncio.gather(self._sending, return_exceptions=True)


def _migrate(conn: psycopg.Connection[Any]) -> None:
    """Apply the migrations past the stored version, one transaction each, under an advisory lock (an
    autocommit connection: the lock is the session's, each step its own transaction)."""
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_MIGRATE,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS hub_schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM hub_schema_version").fetchone()
        version = 0 if row is None else int(row[0])
        if version > len(_MIGRATIONS):
            raise HubError(
                f"hub database schema is version {version}, newer than this pod-agent knows "
                f"({len(_MIGRATIONS)}); upgrade pod-agent on every hub process"
            )
        for target in range(version + 1, len(_MIGRATIONS) + 1):
            with conn.transaction():
                conn.execute(_MIGRATIONS[target - 1].encode())
                conn.execute("DELETE FROM hub_schema_version")
                conn.execute("INSERT INTO hub_schema_version VALUES (%s)", (target,))
            _log.info("hub database migrated to schema version %d", target)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_MIGRATE,))


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> tuple[Any, ...]:
    return _present(conn.execute(query.encode(), params).fetchone())


def _present(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if row is None:
        # Each caller reads a row its own transaction just saw (or an aggregate): absent is a bug.
        raise HubError("hub database returned no row where one must exist")
    return row
