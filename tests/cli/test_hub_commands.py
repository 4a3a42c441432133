"""`pod-agent hub release-pod`: frees a pod name held by an old key; faults are one line and a non-zero code."""

from __future__ import annotations

from pathlib import Path

from pod_agent.hub import SqliteStorage
from pod_agent.hub.storage import PodRecord
from pod_agent.protocol import IdentityKey


def _hub_with_pod(db: Path, name: str) -> str:
    key = IdentityKey.generate()
    storage = SqliteStorage(str(db))
    storage.upsert_pod(PodRecord(
        name=name, key_id=key.key_id, public_key=key.public.to_b64(), schema={"columns": []}, schema_hash="a" * 64,
        row_count=10, sandbox_level="strict", heartbeat_s=1.0, registered_at=1, last_seen=1,
    ))
    storage.close()
    return key.key_id


def test_release_pod_frees_the_name_once(cli, tmp_path: Path) -> None:
    db = tmp_path / "hub.sqlite"
    _hub_with_pod(db, "clinic")
    released = cli("hub", "release-pod", "clinic", "--db", str(db))
    assert released.code == 0 and "released pod name 'clinic'" in released.out
    storage = SqliteStorage(str(db))
    try:
        assert storage.get_pod("clinic") is None
    finally:
        storage.close()
    again = cli("hub", "release-pod", "clinic", "--db", str(db))
    assert again.code != 0 and again.err.count("\n") == 1 and "no pod named 'clinic'" in again.err


def test_release_pod_without_a_hub_database_says_which_to_give(cli, tmp_path: Path) -> None:
    result = cli("hub", "release-pod", "clinic", "--db", str(tmp_path / "absent.sqlite"))
    assert result.code != 0 and "no hub database at" in result.err
    assert not (tmp_path / "absent.sqlite").exists()
