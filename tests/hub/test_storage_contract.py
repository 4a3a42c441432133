"""The ``Storage`` contract below the HTTP API, on both backends: writes that race from two connections (two
hub processes on PostgreSQL, two connections to one SQLite file) store a record once (request nonces are granted
once; a blob's collection and its upload again happen one after the other), a reopened database keeps its
records, and delivery order is submission order. A record naming a blob is stored with its reference or not at
all, also while another process collects the blob."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from pod_agent.hub import Storage, StorageConflict, open_storage
from pod_agent.hub.storage import (
    STRANGER,
    BlobMissing,
    BlobRecord,
    BlobRefRecord,
    HubTaskRecord,
    KeyStanding,
    ModellerRecord,
    ModelRecord,
    NonceClaim,
    PendingKey,
    PodRecord,
    RoundMessageRecord,
)

RACERS = 8
_W = TypeVar("_W")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "hub.sqlite")
    make: Callable[[], str] = request.getfixturevalue("postgres_db")
    return make()


@pytest.fixture
def opened(database: str) -> Iterator[Callable[[], Storage]]:
    """Opens the test's database again on each call (another process's view of it); all closed after."""
    made: list[Storage] = []

    def open_one() -> Storage:
        storage, _ = open_storage(database)
        made.append(storage)
        return storage

    yield open_one
    for storage in made:
        storage.close()


def _task(task_id: str, envelope: bytes = b'{"signed": 1}', pods: tuple[str, ...] = ("a", "b")) -> HubTaskRecord:
    return HubTaskRecord(task_id=task_id, modeller_id="m", envelope=envelope, pods=pods, created_at=1)


def test_a_task_and_a_result_raced_from_two_connections_are_stored_once(opened: Callable[[], Storage]) -> None:
    first, second = opened(), opened()
    with ThreadPoolExecutor(RACERS) as pool:
        outcomes = list(pool.map(lambda i: (first, second)[i % 2].add_task(_task("t1")), range(RACERS)))
        assert sorted(outcomes) == ["duplicate"] * (RACERS - 1) + ["stored"]
        results = list(pool.map(
            lambda i: (first, second)[i % 2].put_result("t1", "a", b"result", status="done", now=2), range(RACERS)
        ))
        assert sorted(results) == ["duplicate"] * (RACERS - 1) + ["stored"]
    assert [d.pod for d in second.deliveries("t1")] == ["a", "b"]
    assert [(d.pod, d.result_status) for d in first.deliveries("t1")] == [("a", "done"), ("b", None)]
    with pytest.raises(StorageConflict, match="task t1 already exists with another envelope"):
        second.add_task(_task("t1", envelope=b'{"signed": 2}'))
    with pytest.raises(StorageConflict, match="already delivered a different result for task t1"):
        first.put_result("t1", "a", b"other", status="done", now=3)


def test_pending_tasks_come_in_submission_order_and_leave_when_acknowledged(opened: Callable[[], Storage]) -> None:
    storage = opened()
    for task_id in ("t3", "t1", "t2"):
        assert storage.add_task(_task(task_id, pods=("a",))) == "stored"
    assert [t.task_id for t in storage.pending_tasks("a")] == storage.pending_task_ids(["a"])["a"] == ["t3", "t1", "t2"]
    assert storage.ack_delivery("t1", "a", now=5) and not storage.ack_delivery("t1", "nobody", now=5)
    assert [t.task_id for t in opened().pending_tasks("a")] == opened().pending_task_ids(["a"])["a"] == ["t3", "t2"]
    assert [t.task_id for t in storage.recent_tasks(2)] == ["t2", "t1"]  # newest first, the status page's


def test_gathered_acknowledgements_and_heartbeats_are_written_in_one_call(opened: Callable[[], Storage]) -> None:
    storage = opened()
    storage.upsert_pod(_pod("a", "k1"))
    storage.upsert_pod(_pod("b", "k2"))
    storage.add_task(_task("t1"))
    storage.add_task(_task("t2", pods=("a",)))
    storage.ack_deliveries([], now=6)
    # Pairs that name no delivery (another pod's task, an unknown task) and repeats change nothing else.
    storage.ack_deliveries([("t1", "a"), ("t1", "b"), ("t1", "nobody"), ("t9", "a"), ("t1", "a")], now=7)
    storage.ack_deliveries([("t1", "a")], now=9)  # the first acknowledgement's time stays
    assert [(d.pod, d.acked_at) for d in opened().deliveries("t1")] == [("a", 7), ("b", 7)]
    assert [t.task_id for t in opened().pending_tasks("a")] == ["t2"]
    storage.touch_pods({"a": 60, "b": 70})
    assert [(p.name, p.last_seen) for p in storage.list_pods()] == [("a", 60), ("b", 70)]


def test_a_reopened_database_keeps_its_records(opened: Callable[[], Storage], database: str) -> None:
    storage = opened()
    storage.add_task(_task("kept"))
    storage.close()
    again, _ = open_storage(database)  # migrations find nothing left to do
    try:
        assert again.get_task("kept") == _task("kept")
    finally:
        again.close()


def _pod(name: str, key_id: str, *, rows: int = 10) -> PodRecord:
    return PodRecord(
        name=name, key_id=key_id, public_key="pk-" + key_id, schema={"columns": []}, schema_hash="a" * 64,
        row_count=rows, sandbox_level="strict", heartbeat_s=5.0, registered_at=1, last_seen=1,
    )


def test_a_pod_name_and_its_key_belong_to_each_other_until_the_name_is_released(
    opened: Callable[[], Storage],
) -> None:
    storage = opened()
    storage.upsert_pod(_pod("a", "k1"))
    storage.upsert_pod(_pod("a", "k1", rows=5))  # the same key re-registering updates its record
    assert storage.get_pod("a") == _pod("a", "k1", rows=5)
    storage.touch_pod("a", now=50)
    assert [p.last_seen for p in storage.list_pods()] == [50]
    with pytest.raises(StorageConflict, match="pod name 'a' is registered to another key"):
        storage.upsert_pod(_pod("a", "k2"))
    with pytest.raises(StorageConflict, match=r"key k1\.\.\. is already registered as pod 'a'; one key per pod"):
        opened().upsert_pod(_pod("b", "k1"))
    assert storage.release_pod("a")
    storage.upsert_pod(_pod("a", "k2"))
    assert storage.pod_by_key("k2") == _pod("a", "k2") and storage.pod_by_key("k1") is None



def test_a_tasks_cohort_is_read_as_its_pods_are_registered_now(opened: Callable[[], Storage]) -> None:
    """What rebuilding a task's cohort reads: its pods only, as registered at the time of the read."""
    storage = opened()
    for name, key in [("a", "k1"), ("b", "k2"), ("c", "k3")]:
        storage.upsert_pod(_pod(name, key))
    storage.add_task(_task("t1", pods=("b", "a")))
    assert sorted(opened().cohort_registrations("t1")) == [("a", "a" * 64, "k1"), ("b", "a" * 64, "k2")]
    storage.release_pod("a")
    storage.upsert_pod(_pod("a", "k4"))  # re-keyed since the task was taken
    assert sorted(opened().cohort_registrations("t1")) == [("a", "a" * 64, "k4"), ("b", "a" * 64, "k2")]
    assert storage.release_pod("b")  # released: no longer in what the cohort is rebuilt from
    assert opened().cohort_registrations("t1") == [("a", "a" * 64, "k4")]
    assert storage.cohort_registrations("unknown") == []


def test_the_pods_a_task_may_name_are_registered_and_awaiting_no_approval(opened: Callable[[], Storage]) -> None:
    storage = opened()
    for name, key in [("a", "k1"), ("b", "k2"), ("c", "k3")]:
        storage.upsert_pod(_pod(name, key))
    storage.add_pending_key(PendingKey(key_id="k2", role="pod", name="b", requested_at=1))
    storage.add_pending_key(PendingKey(key_id="k3", role="pod", name="c", requested_at=1))
    storage.approve_key("k3", now=2)
    assert opened().admitted(["a", "b", "c", "unknown"]) == {"a", "c"}
    assert storage.admitted([]) == set()


def test_keys_standings_read_together_are_each_its_pod_its_modeller_and_whether_it_awaits_approval(
    opened: Callable[[], Storage],
) -> None:
    storage = opened()
    storage.upsert_pod(_pod("a", "k1"))
    storage.upsert_modeller(ModellerRecord(key_id="k1", public_key="pk-k1", name="m", registered_at=3))
    storage.upsert_pod(_pod("b", "k2"))
    storage.upsert_pod(_pod("c", "k4"))
    for key in ("k2", "k3"):
        storage.add_pending_key(PendingKey(key_id=key, role="pod", name="b", requested_at=1))
    assert storage.release_pod("c")  # its key is a stranger again
    asked = ["k1", "k2", "k3", "nobody", "k4", "k1"]
    assert storage.key_standings(asked) == {
        "k1": KeyStanding(_pod("a", "k1"), ModellerRecord("k1", "pk-k1", "m", 3), False),
        "k2": KeyStanding(_pod("b", "k2"), None, True),
        # Awaiting approval, but never stored (its registration failed): a stranger all the same.
        "k3": STRANGER,
        "nobody": STRANGER,
        "k4": STRANGER,
    }
    assert storage.key_standings(["nobody"]) == {"nobody": STRANGER} and storage.key_standings([]) == {}
    storage.approve_key("k2", now=2)
    assert opened().key_standings(["k2"]) == {"k2": KeyStanding(_pod("b", "k2"), None, False)}


def test_nonces_claimed_from_two_connections_are_each_granted_once_and_outlive_them(
    opened: Callable[[], Storage],
) -> None:
    first, second = opened(), opened()
    assert first.claim_nonces([NonceClaim("k1", "spent", 100)]) == {NonceClaim("k1", "spent", 100)}
    # Each connection claims every nonce, in its own order, in batches of 7, at once.
    claims = [NonceClaim(f"k{i % 3}", f"n{i}", 100 + i) for i in range(60)] + [NonceClaim("k1", "spent", 101)]
    batches = [claims[i:i + 7] for i in range(0, len(claims), 7)]
    with ThreadPoolExecutor(4) as pool:
        granted = list(pool.map(
            lambda job: (first, second)[job[0]].claim_nonces(job[1]),
            [(0, b) for b in batches] + [(1, b) for b in reversed(batches)],
        ))
    won = [claim for batch in granted for claim in batch]
    assert sorted(won, key=lambda c: c.nonce) == sorted(claims[:60], key=lambda c: c.nonce)  # each once
    # In one batch, the same key and nonce again (signed at another time): only the first is recorded.
    twice = [NonceClaim("k9", "x", 5), NonceClaim("k8", "x", 6), NonceClaim("k9", "x", 7)]
    assert second.claim_nonces(twice) == {NonceClaim("k9", "x", 5), NonceClaim("k8", "x", 6)}
    assert first.claim_nonces(twice) == set() and first.claim_nonces([]) == set()
    # Opened again (a restarted hub), the database still holds them; pruning forgets only those stamped before.
    restarted = opened()
    assert restarted.claim_nonces([NonceClaim("k1", "spent", 100)]) == set()
    assert restarted.prune_nonces(stamped_before=100) == 2
    assert restarted.claim_nonces([NonceClaim("k9", "x", 5), NonceClaim("k1", "n1", 101)]) == {NonceClaim("k9", "x", 5)}


def test_an_owner_uploading_a_blob_again_refreshes_it_and_no_one_else_can(opened: Callable[[], Storage]) -> None:
    storage = opened()
    sha = "a" * 64
    storage.put_blob(BlobRecord(sha, 10, created_at=1), owner="k1")
    assert storage.unreferenced_blobs(uploaded_before=50) == [sha]
    assert not storage.refresh_blob(sha, owner="k2", now=60) and not storage.refresh_blob("b" * 64, owner="k1", now=60)
    assert storage.unreferenced_blobs(uploaded_before=50) == [sha] and not storage.blob_owned_by(sha, "k2")
    assert opened().refresh_blob(sha, owner="k1", now=60)
    assert storage.unreferenced_blobs(uploaded_before=50) == []
    assert not storage.delete_blob_if_unreferenced(sha, uploaded_before=50, remove=lambda _: pytest.fail("removed"))


def _race_a_collection(collector: Storage, sha: str, write: Callable[[], _W], *, what: str, seen: list[str]) -> _W:
    """Run ``write`` (another connection's) while ``collector`` collects blob ``sha``, held inside its removal of the
    bytes (noted in ``seen``): the write must not complete before the collection commits. Its result, or its error
    raised."""
    removing, release = threading.Event(), threading.Event()

    def remove(removed: str) -> None:
        assert removed == sha
        seen.append("bytes removed")
        removing.set()
        assert release.wait(10)

    with ThreadPoolExecutor(2) as pool:
        collecting = pool.submit(collector.delete_blob_if_unreferenced, sha, uploaded_before=50, remove=remove)
        assert removing.wait(10)
        writing = pool.submit(write)
        time.sleep(0.3)
        assert not writing.done(), f"{what} while its collection was removing the bytes"
        release.set()
        assert collecting.result(10)
        return writing.result(10)


@pytest.mark.parametrize("again", ["another key's upload", "its owner's upload"])
def test_a_blob_is_collected_with_its_bytes_before_another_process_records_it_again(
    opened: Callable[[], Storage], again: str
) -> None:
    """Two hub processes: one collects a blob and removes its bytes while the other takes an upload of it. The
    upload's record waits until the collection has committed, bytes removed, so an upload (which records, then
    places its bytes) never ends with a record whose bytes the collection removed after it."""
    collector, uploader = opened(), opened()
    sha = "c" * 64
    collector.put_blob(BlobRecord(sha, 10, created_at=1), owner="k1")
    order: list[str] = []

    def upload() -> bool:
        if again == "its owner's upload":
            refreshed = uploader.refresh_blob(sha, owner="k1", now=100)
        else:
            uploader.put_blob(BlobRecord(sha, 10, created_at=100), owner="k2")
            refreshed = True
        order.append("recorded")
        return refreshed

    refreshed = _race_a_collection(collector, sha, upload, what="the upload recorded the blob", seen=order)
    assert order == ["bytes removed", "recorded"]
    if again == "its owner's upload":
        # The collection forgot it: the owner is told to send the bytes, not that the hub has them.
        assert not refreshed and collector.get_blob(sha) is None and not collector.blob_owned_by(sha, "k1")
    else:
        assert collector.get_blob(sha) == BlobRecord(sha, 10, 100) and collector.blob_owned_by(sha, "k2")
        assert not collector.blob_owned_by(sha, "k1")


def _naming(kind: str, sha: str) -> Callable[[Storage], object]:
    """A write of the record ``kind`` that names blob ``sha`` (and references it)."""
    if kind == "a task's weights":
        return lambda s: s.add_task(_task("t-w"), refs=[BlobRefRecord(sha, "weights", "t-w")])
    if kind == "a pod's result":
        return lambda s: s.put_result("t-r", "a", b"result", status="done", now=100,
                                      refs=[BlobRefRecord(sha, "result", "t-r", "a")])
    if kind == "a model's weights":
        model = ModelRecord(name="m", version="1", style="lightning", class_name=None, source="x", sha256="0" * 64,
                            weights_sha256=sha, owner="k1", created_at=100)
        return lambda s: s.put_model(model, refs=[BlobRefRecord(sha, "model", "m@1", "k1")])
    message = RoundMessageRecord(task_id="t-r", round=0, stage="masked", sender="a", envelope=b"m", received_at=100)
    return lambda s: s.put_round_message(message, refs=[BlobRefRecord(sha, "masked", "t-r", "a")])


def _named_stored(storage: Storage, kind: str) -> bool:
    """Whether the record ``_naming(kind, ...)`` writes is stored."""
    if kind == "a task's weights":
        return storage.get_task("t-w") is not None
    if kind == "a pod's result":
        return bool(storage.results("t-r"))
    if kind == "a model's weights":
        return storage.get_model("m", "1") is not None
    return bool(storage.round_messages("t-r", 0, "masked"))


NAMING_KINDS = ["a task's weights", "a pod's result", "a model's weights", "a masked input"]


@pytest.mark.parametrize("kind", NAMING_KINDS)
def test_a_record_naming_a_blob_is_stored_with_its_reference_or_not_at_all(
    opened: Callable[[], Storage], kind: str
) -> None:
    """A record that names a blob the hub holds no record of is refused (BlobMissing) and nothing of it is stored;
    one naming a recorded blob references it in the same write, so the blob is no longer collectable."""
    storage = opened()
    storage.add_task(_task("t-r", pods=("a",)))
    sha = "d" * 64
    with pytest.raises(BlobMissing, match="PUT it"):
        _naming(kind, sha)(storage)
    assert not _named_stored(storage, kind)
    storage.put_blob(BlobRecord(sha, 10, created_at=1), owner="k1")
    _naming(kind, sha)(storage)
    assert _named_stored(opened(), kind)
    assert storage.unreferenced_blobs(uploaded_before=50) == []
    assert not storage.delete_blob_if_unreferenced(sha, uploaded_before=50, remove=lambda _: pytest.fail("removed"))


@pytest.mark.parametrize("kind", NAMING_KINDS)
def test_a_record_naming_a_blob_being_collected_waits_and_is_refused(opened: Callable[[], Storage], kind: str) -> None:
    """Two hub processes: one collects a blob and removes its bytes while the other stores a record naming it. The
    record's write waits until the collection has committed and is then refused, storing nothing, so no stored
    record ever names a blob whose bytes a collection removed (the sender is told to PUT it again)."""
    collector, writer = opened(), opened()
    collector.add_task(_task("t-r", pods=("a",)))
    sha = "e" * 64
    collector.put_blob(BlobRecord(sha, 10, created_at=1), owner="k1")
    with pytest.raises(BlobMissing):
        _race_a_collection(
            collector, sha, lambda: _naming(kind, sha)(writer), what="the record named the blob", seen=[]
        )
    assert not _named_stored(collector, kind) and collector.get_blob(sha) is None
