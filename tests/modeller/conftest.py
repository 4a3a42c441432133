"""A real hub on a loopback port, in-process, whose storage the tests may tamper with (a lying hub)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pod_agent.hub import SqliteStorage, create_app, listening


@dataclass
class LocalHub:
    url: str
    storage: SqliteStorage


@pytest.fixture
async def local_hub(tmp_path: Path) -> AsyncIterator[LocalHub]:
    storage = SqliteStorage(":memory:")
    async with listening(create_app(storage, blob_dir=tmp_path / "blobs"), port=0) as url:
        yield LocalHub(url, storage)
    storage.close()
