"""Shared fixtures: the real Adult table (written once per session) and small-file helpers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pod_agent.config import DatasourceSection
from pod_agent.data.adult import AdultFiles, write_adult
from pod_agent.hub.storage import PodRecord
from pod_agent.protocol import IdentityKey


@pytest.fixture(scope="session")
def adult_files(tmp_path_factory: pytest.TempPathFactory) -> AdultFiles:
    """The clean Adult table (48,842 rows, TARGET column) as CSV and Parquet, written once."""
    return write_adult(tmp_path_factory.mktemp("adult"))


@pytest.fixture(scope="session")
def adult_csv(adult_files: AdultFiles) -> Path:
    return adult_files.csv


@pytest.fixture(scope="session")
def adult_parquet(adult_files: AdultFiles) -> Path:
    return adult_files.parquet


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write text (UTF-8) or bytes to tmp_path/name and return the path."""

    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_parquet(tmp_path: Path) -> Callable[[str, dict[str, list[Any]]], Path]:
    """Write a dict of columns as a Parquet file tmp_path/name and return the path."""

    def write(name: str, columns: dict[str, list[Any]]) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        return path

    return write


@pytest.fixture
def section() -> Callable[..., DatasourceSection]:
    """DatasourceSection(path=..., **overrides)."""

    def make(path: Path, **overrides: Any) -> DatasourceSection:
        return DatasourceSection(path=path, **overrides)

    return make


@pytest.fixture
def small_pod_config(tmp_path: Path) -> Callable[..., Path]:
    """A pod.toml for ``pod-agent run`` against ``hub_url``: a fresh key in ``<tmp>/pod``, a 100-row CSV, the
    health endpoint off; ``small_pod_config(name, hub_url, hub="...", security="...", limits="...")`` adds
    TOML lines to those sections."""

    def make(name: str, hub_url: str, *, hub: str = "", security: str, limits: str) -> Path:
        state = tmp_path / "pod"
        state.mkdir()
        IdentityKey.generate().save(state / "identity.pem")
        data = tmp_path / "data.csv"
        data.write_text("age,label\n" + "".join(f"{20 + i % 50},{i % 2}\n" for i in range(100)))
        config = tmp_path / "pod.toml"
        config.write_text(
            f'[pod]\nname = "{name}"\nstate_dir = "{state}"\n[hub]\nurl = "{hub_url}"\n{hub}'
            f'[datasource]\npath = "{data}"\n[security]\n{security}[sandbox_limits]\n{limits}[ops]\nhealth_port = 0\n'
        )
        return config

    return make


@pytest.fixture
def list_pod() -> Callable[..., IdentityKey]:
    """Put a pod with a fresh key in a hub's storage, as its registration would: ``list_pod(storage, name,
    last_seen=...)`` (default now: online); the pod's key is returned, to sign its results."""

    def put(storage: Any, name: str, *, last_seen: int | None = None) -> IdentityKey:
        key = IdentityKey.generate()
        now = int(time.time())
        storage.upsert_pod(PodRecord(
            name=name, key_id=key.key_id, public_key=key.public.to_b64(), schema={"columns": []},
            schema_hash="a" * 64, row_count=100, sandbox_level="strict", heartbeat_s=5.0, registered_at=now,
            last_seen=now if last_seen is None else last_seen,
        ))
        return key

    return put


@pytest.fixture
def hub_process_url(tmp_path: Path) -> Iterator[str]:
    """A real reference hub process (`pod-agent hub serve`) on a free loopback port; its URL."""
    with _hub_process(tmp_path / "hub.sqlite") as url:
        yield url


@pytest.fixture(scope="module")
def module_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One hub process for a test module (its start costs a second): its URL and database."""
    db = tmp_path_factory.mktemp("hub") / "hub.sqlite"
    with _hub_process(db) as url:
        yield url, db


@contextlib.contextmanager
def _hub_process(db: Path) -> Iterator[str]:
    hub = subprocess.Popen(
        [sys.executable, "-m", "pod_agent", "hub", "serve", "--db", str(db), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = hub.stdout.readline() if hub.stdout else ""
        assert "hub listening on" in line, line
        yield line.split("hub listening on", 1)[1].strip()
    finally:
        hub.kill()
        hub.wait(10)
        if hub.stdout is not None:
            hub.stdout.close()


# Set by .ci/with-postgres (CI): a throwaway PostgreSQL. Tests that need it skip without it, and fail when it
# is set but unreachable, so that CI cannot pass them by skipping.
POSTGRES_ENV = "POD_AGENT_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test PostgreSQL's URL (its default database)."""
    import psycopg

    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"needs PostgreSQL: {POSTGRES_ENV} is not set (run the tests under `bash .ci/with-postgres`)")
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.fail(f"{POSTGRES_ENV}={url} is set but PostgreSQL there is unreachable: {exc}")
    return url


@pytest.fixture
def postgres_db(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Makes fresh databases on the test PostgreSQL: each call a ``postgresql://`` URL whose search_path is a
    schema of its own, dropped after the test."""
    import psycopg

    made: list[str] = []

    def make() -> str:
        schema = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        made.append(schema)
        return f"{postgres_server}{'&' if '?' in postgres_server else '?'}options=-csearch_path%3D{schema}"

    yield make
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        for schema in made:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


@pytest.fixture(scope="session")
def tutorial_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The tutorials' federation (tutorial_support.SharedFederation): a hub with its status page and three
    real pods, started once per session by the first test that asks for it."""
    from tutorial_support import shared_federation

    with shared_federation(tmp_path_factory.mktemp("tutorial")) as shared:
        yield shared
