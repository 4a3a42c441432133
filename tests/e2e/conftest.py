"""Fixtures for the end-to-end tests: real processes on 127.0.0.1 (helpers live in e2e_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (  # type: ignore[import-not-found]
    SMALL_CSV,
    Cluster,
    FaultProxy,
    register_modeller,
    start_cluster_at,
)

from pod_agent.modeller import run_sync


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    path = tmp_path / "small.csv"
    path.write_text(SMALL_CSV)
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = start_cluster_at(tmp_path)
    run_sync(register_modeller(c.modeller))
    try:
        yield c
    finally:
        for agent in c.agents:
            agent.kill()
        c.hub.kill()


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """For tests that need their own hub options (TLS)."""
    made: list[Cluster] = []

    def make(**hub_kwargs: Any) -> Cluster:
        c = start_cluster_at(tmp_path, **hub_kwargs)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            for agent in c.agents:
                agent.kill()
            c.hub.kill()


@pytest.fixture
async def fault_proxy(cluster: Cluster) -> AsyncIterator[FaultProxy]:
    proxy = await FaultProxy(cluster.hub.port).start()
    yield proxy
    await proxy.close()


