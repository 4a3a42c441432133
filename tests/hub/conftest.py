"""A real hub on a loopback port (in-process aiohttp runner) and signed raw callers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pod_agent.hub import SqliteStorage, create_app, listening
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
    storage: SqliteStorage
    blob_dir: Path
    session: aiohttp.ClientSession

    def caller(self, key: IdentityKey) -> Caller:
        return Caller(self.base, key, self.session)

    @staticmethod
    def pod_registration(key: IdentityKey, name: str, *, schema_hash: str = "a" * 64) -> dict[str, Any]:
        return {
            "name": name, "public_key": key.public.to_b64(), "schema_public": {"columns": []},
            "schema_hash": schema_hash, "row_count": 10, "sandbox_level": "none", "heartbeat_s": 1.0,
        }


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubFixture]:
    storage = SqliteStorage(":memory:")
    blob_dir = tmp_path / "blobs"
    async with listening(create_app(storage, blob_dir=blob_dir), port=0) as base, aiohttp.ClientSession() as session:
        yield HubFixture(base, storage, blob_dir, session)
    storage.close()


HubMaker = Callable[..., Awaitable[HubFixture]]


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[HubMaker]:
    """Start a hub with ``create_app`` keyword arguments (registration, limits); ``db`` picks a file database."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        count = 0

        async def start(*, db: Path | None = None, **app_kwargs: Any) -> HubFixture:
            nonlocal count
            count += 1
            storage = SqliteStorage(db if db is not None else ":memory:")
            stack.callback(storage.close)
            blob_dir = tmp_path / f"blobs-{count}"
            base = await stack.enter_async_context(
                listening(create_app(storage, blob_dir=blob_dir, **app_kwargs), port=0)
            )
            return HubFixture(base, storage, blob_dir, session)

        yield start
