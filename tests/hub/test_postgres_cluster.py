"""Hub processes sharing one PostgreSQL (``PostgresCluster``), each as its own in-process app here: a request
replayed to another process is refused, and a wake-up published by one process reaches the others only; and
what an operator meets opening the database (unreachable, migrated by a newer version, no shared blob dir)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from pod_agent.errors import HubError
from pod_agent.hub import PostgresCluster, PostgresStorage, create_app, listening
from pod_agent.hub.fanout import fanout_key
from pod_agent.hub.storage import HubTaskRecord
from pod_agent.protocol import IdentityKey, canonical_json, sign_request


@pytest.fixture
async def two_hubs(postgres_db: Callable[[], str], tmp_path: Path) -> AsyncIterator[list[str]]:
    """Two hubs (base URLs) on one database and one blob directory, as two processes would be."""
    url = postgres_db()
    stores = [PostgresStorage(url), PostgresStorage(url)]
    try:
        async with (
            listening(create_app(stores[0], blob_dir=tmp_path, cluster=PostgresCluster(stores[0])), port=0) as a,
            listening(create_app(stores[1], blob_dir=tmp_path, cluster=PostgresCluster(stores[1])), port=0) as b,
        ):
            yield [a, b]
    finally:
        for storage in stores:
            storage.close()


async def test_a_request_replayed_to_another_hub_process_is_refused(two_hubs: list[str]) -> None:
    a, b = two_hubs
    modeller = IdentityKey.generate()
    body = canonical_json({"name": "m", "public_key": modeller.public.to_b64()})
    async with aiohttp.ClientSession() as session:
        headers = sign_request(modeller, "POST", "/v1/modellers/register", body, now=int(time.time()))
        async with session.post(a + "/v1/modellers/register", data=body, headers=headers) as first:
            assert first.status == 200
        listing = sign_request(modeller, "GET", "/v1/pods", b"", now=int(time.time()))
        async with session.get(b + "/v1/pods", headers=listing) as served:
            assert served.status == 200  # registered through A, known to B
        # A captured request sent again, to the process that has not seen it: refused like a replay to A.
        async with session.get(a + "/v1/pods", headers=listing) as replayed:
            assert replayed.status == 401
            assert "already used: re-sign the request" in (await replayed.json())["error"]


async def test_a_request_sent_at_once_to_both_processes_many_times_is_served_once(two_hubs: list[str]) -> None:
    # Hostile: copies of one captured request race to both processes, in the same batches of nonce claims as
    # honest requests of the same key; one copy is served, every other refused, the honest ones all served.
    modeller = IdentityKey.generate()
    body = canonical_json({"name": "m", "public_key": modeller.public.to_b64()})
    async with aiohttp.ClientSession() as session:
        headers = sign_request(modeller, "POST", "/v1/modellers/register", body, now=int(time.time()))
        async with session.post(two_hubs[0] + "/v1/modellers/register", data=body, headers=headers) as first:
            assert first.status == 200
        captured = sign_request(modeller, "GET", "/v1/pods", b"", now=int(time.time()))

        async def send(base: str, headers: dict[str, str]) -> tuple[int, str]:
            async with session.get(base + "/v1/pods", headers=headers) as resp:
                return resp.status, (await resp.json()).get("error", "")

        honest = [sign_request(modeller, "GET", "/v1/pods", b"", now=int(time.time())) for _ in range(20)]
        sent = [(two_hubs[i % 2], captured) for i in range(20)] + [(two_hubs[i % 2], h) for i, h in enumerate(honest)]
        answers = await asyncio.gather(*(send(base, h) for base, h in sent))
    replays, served = answers[:20], answers[20:]
    assert sorted(status for status, _ in replays) == [200] + [401] * 19
    assert all("already used: re-sign the request" in error for status, error in replays if status == 401)
    assert served == [(200, "")] * 20


async def test_a_wake_up_reaches_the_other_processes_and_not_its_sender(
    postgres_db: Callable[[], str],
) -> None:
    storage = PostgresStorage(postgres_db())
    sender, receiver = PostgresCluster(storage), PostgresCluster(storage)
    heard: dict[str, list[str]] = {"sender": [], "receiver": []}
    listeners = [
        asyncio.create_task(cluster.run(heard[name].append, lambda: None))
        for name, cluster in (("sender", sender), ("receiver", receiver))
    ]
    try:
        await asyncio.sleep(0.3)  # both LISTENing
        for key in ("pod-1", "task:t1", "secagg:t1:0"):
            sender.publish(key)
        deadline = time.monotonic() + 5
        while len(heard["receiver"]) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert heard == {"sender": [], "receiver": ["pod-1", "task:t1", "secagg:t1:0"]}
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await sender.close()
        storage.close()


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_a_new_task_is_announced_to_the_other_processes_by_its_own_commit(
    postgres_db: Callable[[], str],
) -> None:
    # The process that takes a task may die right after storing it: with nothing else of it run (here: nothing
    # after add_task), the other processes still hear of the task at once, not when their pods next re-read
    # storage (MAX_LONG_POLL_S later); and the process's own publish of the task's fan-out sends no second copy.
    url = postgres_db()
    stores = [PostgresStorage(url), PostgresStorage(url)]
    submitter, other = PostgresCluster(stores[0]), PostgresCluster(stores[1])
    heard: dict[str, list[str]] = {"submitter": [], "other": []}
    listeners = [
        asyncio.create_task(cluster.run(heard[name].append, lambda: None))
        for name, cluster in (("submitter", submitter), ("other", other))
    ]
    try:
        await asyncio.sleep(0.3)  # both LISTENing
        task = HubTaskRecord(task_id="t1", modeller_id="m", envelope=b'{"signed": 1}', pods=("pod-1",), created_at=1)
        assert await asyncio.to_thread(stores[0].add_task, task) == "stored"
        await _until(lambda: len(heard["other"]) >= 1)
        assert heard == {"submitter": [], "other": [fanout_key("t1")]}
        # What the hub publishes after storing a task: no second copy of the task's fan-out.
        submitter.publish(fanout_key("t1"))
        submitter.publish("pod-1")
        await _until(lambda: len(heard["other"]) >= 2)
        assert heard == {"submitter": [], "other": [fanout_key("t1"), "pod-1"]}
    finally:
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await submitter.close()
        for storage in stores:
            storage.close()


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://hub:s3cret-word@/hubdb?host={tmp_path}"  # no server on that socket directory
    with pytest.raises(HubError, match=r"hub database postgresql://hub@.*/hubdb cannot be opened") as caught:
        PostgresStorage(url)
    assert "s3cret-word" not in str(caught.value)


def test_a_database_migrated_by_a_newer_pod_agent_is_refused(postgres_db: Callable[[], str]) -> None:
    import psycopg

    url = postgres_db()
    PostgresStorage(url).close()
    with psycopg.connect(url) as conn:
        assert conn.execute(b"SELECT version FROM hub_schema_version").fetchall() == [(2,)]
        conn.execute(b"UPDATE hub_schema_version SET version = 99")
    with pytest.raises(HubError, match="schema is version 99, newer than this pod-agent knows"):
        PostgresStorage(url)


def test_a_version_1_database_is_migrated_forward_and_its_deliveries_lose_the_per_row_task_check(
    postgres_db: Callable[[], str],
) -> None:
    import psycopg

    url = postgres_db()
    PostgresStorage(url).close()
    with psycopg.connect(url) as conn:  # as a hub of schema version 1 left it
        conn.execute(
            b"ALTER TABLE deliveries ADD CONSTRAINT deliveries_task_id_fkey FOREIGN KEY (task_id) REFERENCES tasks"
        )
        conn.execute(b"UPDATE hub_schema_version SET version = 1")
    storage = PostgresStorage(url)
    try:
        task = HubTaskRecord(task_id="t1", modeller_id="m", envelope=b"{}", pods=("pod-1", "pod-2"), created_at=1)
        assert storage.add_task(task) == "stored"
        assert storage.pending_task_ids(["pod-1", "pod-2"]) == {"pod-1": ["t1"], "pod-2": ["t1"]}
    finally:
        storage.close()
    with psycopg.connect(url) as conn:
        assert conn.execute(b"SELECT version FROM hub_schema_version").fetchall() == [(2,)]
        foreign = b"SELECT conname FROM pg_constraint WHERE conrelid = 'deliveries'::regclass AND contype = 'f'"
        assert conn.execute(foreign).fetchall() == []


def test_hub_serve_on_postgresql_needs_a_shared_blob_dir(postgres_db: Callable[[], str]) -> None:
    from pod_agent.hub import serve

    with pytest.raises(HubError, match="a hub on PostgreSQL needs --blob-dir"):
        asyncio.run(serve(db=postgres_db(), port=0))
