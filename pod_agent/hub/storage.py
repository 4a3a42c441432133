"""What the reference hub stores, behind one small interface.

Owns the ``Storage`` protocol (pods, modellers, models, tasks and their per-pod
deliveries, results, progress, secure-round messages, blob metadata with owners and the
records that reference each blob, enrolment tokens and keys awaiting approval) and the
frozen records it returns. A write that stores a record naming blobs (a task's weights, a pod's result, a
model's weights, a masked input: its ``refs``) references them in its own transaction, each blob's record found
under the same per-blob ordering as its collection, or raises ``BlobMissing`` and stores nothing: so no stored
record ever names a blob that a collection removed. Who may read what is answered here as facts (``may_read_blob``,
``pod_targeted_by``); the server turns a "no" into a refusal. ``sqlite.py`` implements it on stdlib
sqlite3, ``postgres.py`` on PostgreSQL (the same tests run against both: tests/hub). Blob bytes live
on disk (``blobs.py``), not here. Every method is synchronous and short; the server calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pod_agent.errors import HubError

PutOutcome = Literal["stored", "duplicate"]
# What points at a blob: a task's pinned weights, a pod's result, a pod's masked secure-round
# input, a published model's weights. A blob nothing points at is garbage after a grace period.
BlobRefKind = Literal["weights", "result", "masked", "model"]
KeyRole = Literal["pod", "modeller"]


class StorageConflict(HubError):
    """A write would replace a different record under the same id (HTTP 409)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)


class BlobMissing(HubError):
    """A record names a blob the hub holds no record of (HTTP 424): never uploaded, or collected while nothing
    referenced it."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        super().__init__(
            f"blob {sha256[:12]}... is not on the hub (never uploaded, or collected while nothing referenced it): "
            "PUT it, then send this again",
            status=424,
        )


@dataclass(frozen=True)
class PodRecord:
    name: str
    key_id: str
    public_key: str  # base64 raw Ed25519
    schema: dict[str, object]
    schema_hash: str
    row_count: int
    sandbox_level: str
    heartbeat_s: float
    registered_at: int
    last_seen: int


@dataclass(frozen=True)
class ModellerRecord:
    key_id: str
    public_key: str
    name: str
    registered_at: int


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    style: str
    class_name: str | None
    source: str
    sha256: str
    weights_sha256: str | None
    owner: str  # modeller key id
    created_at: int
    # Private by default: only the owner and the pods its tasks target read the source.
    public: bool = False


@dataclass(frozen=True)
class HubTaskRecord:
    """A task as the hub stores it for delivery; a pod's own record of a task is ``state.TaskRecord``."""

    task_id: str
    modeller_id: str
    envelope: bytes  # the signed task envelope exactly as submitted
    pods: tuple[str, ...]
    created_at: int


@dataclass(frozen=True)
class DeliveryRecord:
    task_id: str
    pod: str
    acked_at: int | None
    refusal: str | None  # a refusal code reported by the pod
    result_status: str | None
    progress: dict[str, object] | None


@dataclass(frozen=True)
class ResultRecord:
    task_id: str
    pod: str
    envelope: bytes  # the pod-signed result envelope exactly as uploaded
    received_at: int


@dataclass(frozen=True)
class RoundMessageRecord:
    """One signed message of a secure round, as relayed: its sender (a pod name or
    ``protocol.MODELLER_SENDER``) and the envelope exactly as posted."""

    task_id: str
    round: int
    stage: str
    sender: str
    envelope: bytes
    received_at: int


@dataclass(frozen=True)
class BlobRecord:
    sha256: str
    size_bytes: int
    created_at: int


@dataclass(frozen=True)
class BlobRefRecord:
    """``task_id`` is the task (or ``name@version`` of a model); ``party`` the pod that sent a result or
    masked input naming the blob (empty for weights and models)."""

    sha256: str
    kind: BlobRefKind
    task_id: str
    party: str = ""


@dataclass(frozen=True)
class BlobUsage:
    """What one key's uploads hold at the hub (a blob two keys uploaded counts for both)."""

    size_bytes: int
    count: int


@dataclass(frozen=True)
class PendingKey:
    """A key that registered while the hub required approval, and what it registered as."""

    key_id: str
    role: KeyRole
    name: str
    requested_at: int


@dataclass(frozen=True)
class KeyStanding:
    """What the hub holds for a key id (a signed request's signer): its pod's and modeller's records, and
    whether it awaits approval (only ever for a key with a record)."""

    pod: PodRecord | None
    modeller: ModellerRecord | None
    pending: bool


@dataclass(frozen=True)
class NonceClaim:
    """A signed request's nonce under its key, and the timestamp it was signed at (kept until past the window)."""

    key_id: str
    nonce: str
    timestamp: int


def first_claims(claims: Sequence[NonceClaim]) -> list[NonceClaim]:
    """Of claims with one key and nonce, the first."""
    first: dict[tuple[str, str], NonceClaim] = {}
    for claim in claims:
        first.setdefault((claim.key_id, claim.nonce), claim)
    return list(first.values())


# What the hub holds for a key it has never registered.
STRANGER = KeyStanding(None, None, False)


def key_standings_query(pod_columns: str, keys: str) -> str:
    """``Storage.key_standings``'s one query, given the backend's pod columns (``pod_record``'s order) and a
    FROM item ``keys`` that yields the key ids asked as ``q(key_id)`` (its placeholder bound to them);
    ``key_standings`` reads its rows."""
    columns = ", ".join(f"p.{column}" for column in pod_columns.split(", "))
    # Built from the backends' own column list and key source; the key ids are bound.
    return (
        f"SELECT q.key_id, {columns}, m.key_id, m.public_key, m.name, m.registered_at, EXISTS"  # noqa: S608
        " (SELECT 1 FROM key_approvals a WHERE a.key_id = q.key_id AND a.approved_at IS NULL)"
        f" FROM {keys} LEFT JOIN pods p ON p.key_id = q.key_id LEFT JOIN modellers m ON m.key_id = q.key_id"
    )


def key_standings(asked: Iterable[str], rows: Iterable[tuple[Any, ...]]) -> dict[str, KeyStanding]:
    """Each key id ``asked`` and its standing, from ``key_standings_query``'s rows (a key in none: a stranger)."""
    found = {}
    for row in rows:
        pod = None if row[1] is None else pod_record(row[1:11])
        modeller = None if row[11] is None else ModellerRecord(str(row[11]), str(row[12]), str(row[13]), int(row[14]))
        found[str(row[0])] = KeyStanding(pod, modeller, bool(row[15]) and (pod is not None or modeller is not None))
    return {key_id: found.get(key_id, STRANGER) for key_id in asked}


def pod_record(row: tuple[Any, ...]) -> PodRecord:
    """A pod from a row of its columns in storage order (both backends select them alike)."""
    (name, key_id, public_key, schema, schema_hash, row_count, level, heartbeat_s, registered, seen) = row
    return PodRecord(
        name=str(name), key_id=str(key_id), public_key=str(public_key), schema=json.loads(schema),
        schema_hash=str(schema_hash), row_count=int(row_count), sandbox_level=str(level),
        heartbeat_s=float(heartbeat_s), registered_at=int(registered), last_seen=int(seen),
    )


def hub_task_record(row: tuple[Any, ...]) -> HubTaskRecord:
    """A task from a row of (task_id, modeller_id, envelope, pods as JSON, created_at)."""
    task_id, modeller_id, envelope, pods, created = row
    return HubTaskRecord(
        task_id=str(task_id), modeller_id=str(modeller_id), envelope=bytes(envelope),
        pods=tuple(json.loads(pods)), created_at=int(created),
    )


def pending_by_pod(rows: Iterable[tuple[Any, ...]]) -> dict[str, list[str]]:
    """``Storage.pending_task_ids`` from rows of (pod, task_id) in delivery order (both backends select them alike)."""
    out: dict[str, list[str]] = {}
    for pod, task_id in rows:
        out.setdefault(str(pod), []).append(str(task_id))
    return out


class Storage(Protocol):
    """Everything the hub persists except blob bytes."""

    def upsert_pod(self, pod: PodRecord) -> None:
        """Insert or replace a pod; raises StorageConflict if the name belongs to another key."""

    def get_pod(self, name: str) -> PodRecord | None: ...

    def pod_by_key(self, key_id: str) -> PodRecord | None: ...

    def key_standings(self, key_ids: Sequence[str]) -> dict[str, KeyStanding]:
        """Each key id's pod and modeller records and whether it awaits approval (``STRANGER`` for a key with
        neither), in one query for them all: every signed request asks it for its signer, and the requests of
        a pod fleet reconnecting at once are asked together (``batching.GatheredReads``). The pods'
        ``last_seen`` may lag the heartbeats not yet written (``touch_pods``)."""

    def list_pods(self) -> list[PodRecord]: ...

    def admitted(self, names: Sequence[str]) -> set[str]:
        """Those of ``names`` that are registered pods whose key awaits no approval (the pods a task may name):
        one query, where a 10,000-pod task's check had read every pod's record."""

    def touch_pod(self, name: str, *, now: int) -> None: ...

    def touch_pods(self, seen: Mapping[str, int]) -> None:
        """``touch_pod`` for each pod named, at its time, in one write: the heartbeats a hub gathered."""

    def add_pod_rotation(self, pod: str, statement: bytes, *, now: int) -> None:
        """Keep a key rotation statement (canonical envelope JSON) the hub took ``pod``'s re-keying on; the same
        statement again is a no-op. Modellers that pinned an older key follow these to the new one."""

    def pod_rotations(self) -> dict[str, list[bytes]]:
        """Each pod's kept rotation statements, oldest first (pods never re-keyed are absent)."""

    def release_pod(self, name: str) -> bool:
        """Forget a pod's registration (its name and key), so a re-keyed pod can register; False if unknown.

        Tasks, deliveries and results already stored for that name stay.
        """

    def upsert_modeller(self, modeller: ModellerRecord) -> None: ...

    def get_modeller(self, key_id: str) -> ModellerRecord | None: ...

    def put_model(self, model: ModelRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        """Store a model version; the same content again is a duplicate, other content a conflict. ``refs``: its
        weights, referenced with it (see the module docstring; BlobMissing)."""

    def get_model(self, name: str, version: str) -> ModelRecord | None: ...

    def add_task(self, task: HubTaskRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        """Store a task and one delivery per target pod; same envelope again is a duplicate. ``refs``: the blobs it
        pins, referenced with it (see the module docstring; BlobMissing)."""

    def get_task(self, task_id: str) -> HubTaskRecord | None: ...

    def cohort_registrations(self, task_id: str) -> list[tuple[str, str, str]]:
        """(name, schema hash, key id) as registered now, of each of the task's pods still registered, in no
        order: what rebuilding its cohort reads (not every pod's whole record)."""

    def recent_tasks(self, limit: int) -> list[HubTaskRecord]:
        """The ``limit`` most recently submitted tasks, newest first (the operator's status page)."""

    def pending_tasks(self, pod: str) -> list[HubTaskRecord]:
        """Tasks for this pod that it has not acknowledged yet, oldest first."""

    def pending_task_ids(self, pods: Sequence[str]) -> dict[str, list[str]]:
        """The ids of each pod's ``pending_tasks`` (a pod with none is left out), in one query: what push loops
        read, without each task's cohort list, those of many pods together (``batching.GatheredReads``)."""

    def ack_delivery(self, task_id: str, pod: str, *, now: int) -> bool:
        """Mark a delivery acknowledged; False when there is no such delivery."""

    def ack_deliveries(self, acks: Sequence[tuple[str, str]], *, now: int) -> None:
        """``ack_delivery`` for each (task id, pod), in one write (a fan-out's acknowledgements, gathered);
        a pair that names no delivery changes nothing."""

    def record_refusal(self, task_id: str, pod: str, code: str, *, now: int) -> bool: ...

    def record_progress(self, task_id: str, pod: str, event: dict[str, object]) -> bool: ...

    def deliveries(self, task_id: str) -> list[DeliveryRecord]: ...

    def put_result(
        self, task_id: str, pod: str, envelope: bytes, *, status: str, now: int, refs: Sequence[BlobRefRecord] = ()
    ) -> PutOutcome:
        """Store a pod's result; identical bytes again are a duplicate, different bytes a conflict. ``refs``: the
        blob it names, referenced with it (see the module docstring; BlobMissing)."""

    def results(self, task_id: str) -> list[ResultRecord]: ...

    def put_round_message(self, message: RoundMessageRecord, *, refs: Sequence[BlobRefRecord] = ()) -> PutOutcome:
        """Store one message per (task, round, stage, sender): identical bytes again are a duplicate,
        different bytes a conflict (a sender cannot change what it said). ``refs``: the blob a masked input names,
        referenced with it (see the module docstring; BlobMissing)."""

    def round_messages(self, task_id: str, round_index: int, stage: str) -> list[RoundMessageRecord]:
        """A stage's messages in the order they arrived."""

    def put_blob(self, blob: BlobRecord, *, owner: str) -> None:
        """Record a blob (if new) and ``owner`` as one of its uploaders, as of ``blob.created_at``
        (an owner uploading it again refreshes that time, which garbage collection counts from). A collection
        of the same blob in progress, in any process, is decided first."""

    def refresh_blob(self, sha256: str, *, owner: str, now: int) -> bool:
        """``owner`` uploaded the blob again: its upload time becomes ``now`` (collection's grace period starts
        over). False, changing nothing, when the blob has no record or ``owner`` is not one of its uploaders. A
        collection of the same blob in progress, in any process, is decided first."""

    def get_blob(self, sha256: str) -> BlobRecord | None: ...

    def blob_owned_by(self, sha256: str, key_id: str) -> bool: ...

    def blob_usage(self, key_id: str) -> BlobUsage: ...

    def may_read_blob(self, sha256: str, *, key_id: str, pod: str | None) -> bool:
        """Whether ``key_id`` (the pod ``pod``, if it is one) may download the blob: one of its uploaders;
        the modeller of a task whose result or masked input names it, sent by a pod that uploaded it; or a
        pod targeted by a task pinning it as weights whose modeller uploaded it."""

    def unreferenced_blobs(self, *, uploaded_before: int) -> list[str]:
        """Blobs nothing references whose last upload is older than ``uploaded_before``."""

    def delete_blob_if_unreferenced(
        self, sha256: str, *, uploaded_before: int, remove: Callable[[str], None]
    ) -> bool:
        """Forget the blob and its owners if still unreferenced and not uploaded since, and ``remove(sha256)``
        its bytes before that decision commits; True if forgotten. Recording, refreshing, referencing and forgetting
        one blob happen one at a time across processes, and an upload records a blob before it places the bytes: so
        a collection never removes bytes that an upload in another process has just recorded, nor those of a blob
        that a record stored meanwhile names."""

    def pod_targeted_by(self, pod: str, modeller_id: str) -> bool:
        """Whether any task of ``modeller_id`` targets ``pod``."""

    def add_enrolment_token(self, token_sha256: str, *, created_at: int, expires_at: int, note: str) -> None: ...

    def consume_enrolment_token(self, token_sha256: str, *, key_id: str, now: int) -> bool:
        """Mark an unused, unexpired token used by ``key_id``; False if there is no such token."""

    def release_enrolment_token(self, token_sha256: str) -> None:
        """Make a consumed token usable again (its registration failed after all)."""

    def add_pending_key(self, pending: PendingKey) -> None:
        """Record a key as awaiting approval (once; a later registration keeps the first record)."""

    def key_pending(self, key_id: str) -> bool: ...

    def pending_keys(self) -> list[PendingKey]: ...

    def approve_key(self, key_id: str, *, now: int) -> bool:
        """Approve a pending key; False if it is not pending."""

    def claim_nonces(self, claims: Sequence[NonceClaim]) -> set[NonceClaim]:
        """Record signed requests' (key, nonce); the claims recorded now (of two with one key and nonce, the
        first), none recorded before: by any process, before any restart."""

    def prune_nonces(self, *, stamped_before: int) -> int:
        """Forget nonces of requests stamped before ``stamped_before`` (refused as too old anyway); how many."""

    def close(self) -> None: ...
