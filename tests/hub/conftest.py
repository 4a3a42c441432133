"""A real hub on a loopback port (in-process aiohttp runner) and signed raw callers.

``hub`` and ``make_hub`` run each test once per storage backend (SQLite, and PostgreSQL where the test
database is given), so the API tests are the storage contract suite too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pod_agent.hub import Storage, create_app, listening, open_storage
from pod_agent.protocol import IdentityKey, canonical_json, sign_request


@dataclass
class Caller:
    """Signs each request with ``key``; returns (status, parsed JSON or text)."""

    base: str
    key: IdentityKey
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (b"" if body is None else canonical_json(body))
        headers = sign_request(self.key, method, path, data, now=int(time.time()))
        async with self.session.request(method, self.base + path, data=data or None, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, text


@dataclass
class HubFixture:
    base: str
    storage: Storage
    blob_dir: Path
    session: aiohttp.ClientSession
    db: str  # what `pod-agent hub ... --db` names: an SQLite file (or :memory:) or a postgresql:// URL

    def caller(self, key: IdentityKey) -> Caller:
        return Caller(self.base, key, self.session)

    @staticmethod
    def pod_registration(key: IdentityKey, name: str, *, schema_hash: str = "a" * 64) -> dict[str, Any]:
        return {
            "name": name, "public_key": key.public.to_b64(), "schema_public": {"columns": []},
            "schema_hash": schema_hash, "row_count": 10, "sandbox_level": "none", "heartbeat_s": 1.0,
        }


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes a fresh database of this test's backend: an SQLite file, or a schema on the test PostgreSQL."""
    if request.param == "sqlite":
        count = iter(range(1000))
        return lambda: str(tmp_path / f"hub-{next(count)}.sqlite")
    make: Callable[[], str] = request.getfixturevalue("postgres_db")
    return make


HubMaker = Callable[..., Awaitable[HubFixture]]


@pytest.fixture
async def make_hub(tmp_path: Path, backend_db: Callable[[], str]) -> AsyncIterator[HubMaker]:
    """Start a hub with ``create_app`` keyword arguments (registration, limits) on a fresh database."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        count = 0

        async def start(**app_kwargs: Any) -> HubFixture:
            nonlocal count
            count += 1
            db = backend_db()
            storage, cluster = open_storage(db)
            stack.callback(storage.close)
            blob_dir = tmp_path / f"blobs-{count}"
            base = await stack.enter_async_context(
                listening(create_app(storage, blob_dir=blob_dir, cluster=cluster, **app_kwargs), port=0)
            )
            return HubFixture(base, storage, blob_dir, session, db)

        yield start


@pytest.fixture
async def hub(make_hub: HubMaker) -> HubFixture:
    return await make_hub()
