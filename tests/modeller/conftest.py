"""A real hub on a loopback port, in-process, whose storage the tests may tamper with (a lying hub)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from pod_agent.hub import SqliteStorage, create_app


@dataclass
class LocalHub:
    url: str
    storage: SqliteStorage


@pytest.fixture
async def local_hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    storage = SqliteStorage(":memory:")
    runner = web.AppRunner(create_app(storage, blob_dir=tmp_path / "blobs"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield LocalHub(f"http://127.0.0.1:{runner.addresses[0][1]}", storage)
    await runner.cleanup()
    storage.close()
