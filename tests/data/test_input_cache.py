"""The prepared-input cache: one preparation per selection and file, linked into each task's input."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pod_agent.config.settings import DatasourceSection
from pod_agent.data import Datasource, open_datasource
from pod_agent.data import input_cache as input_cache_module
from pod_agent.data.input_cache import TaskInputCache
from pod_agent.data.task_input import FILE_LAYOUT_VERSION, prepare_task_input
from pod_agent.protocol.messages import DataSelection, Split

SELECTION = DataSelection(target="label", columns=["colour", "size"])


def _source(path: Path, n: int, seed: int = 0) -> Datasource:
    rng = np.random.default_rng(seed)
    size = rng.normal(50.0, 10.0, size=n)
    pq.write_table(
        pa.table({"colour": rng.choice(["red", "blue"], size=n), "size": size,
                  "label": np.where(size > 50, "yes", "no")}),
        path,
    )
    return open_datasource(DatasourceSection(path=path))


def _prepare(cache: TaskInputCache, ds: Datasource, out: Path, selection: DataSelection = SELECTION) -> Path:
    return cache.prepare(ds, ds.schema(), selection, out, share_categories=False).path


def _scribble(path: Path) -> None:
    os.chmod(path, 0o600)
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * 16)


def test_a_second_task_gets_the_first_ones_preparation_by_hard_link(tmp_path: Path) -> None:
    ds = _source(tmp_path / "t.parquet", 500)
    cache = TaskInputCache(tmp_path / "state" / "input-cache", max_bytes=1 << 30)
    first, second = _prepare(cache, ds, tmp_path / "task1"), _prepare(cache, ds, tmp_path / "task2")
    assert first.stat().st_ino == second.stat().st_ino
    fresh = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "fresh", share_categories=False)
    assert second.read_bytes() == fresh.path.read_bytes()
    assert stat.S_IMODE((tmp_path / "state" / "input-cache").stat().st_mode) == 0o700
    # Another split seed is another input.
    other = _prepare(cache, ds, tmp_path / "task3", SELECTION.model_copy(update={"split": Split(seed=1)}))
    assert other.stat().st_ino != first.stat().st_ino


def test_a_changed_data_file_is_prepared_again(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    cache = TaskInputCache(tmp_path / "cache", max_bytes=1 << 30)
    before = _prepare(cache, _source(path, 500), tmp_path / "task1").read_bytes()
    changed = _source(path, 500, seed=1)
    after = _prepare(cache, changed, tmp_path / "task2").read_bytes()
    assert after != before
    assert (
        after
        == prepare_task_input(
            changed, changed.schema(), SELECTION, tmp_path / "f", share_categories=False
        ).path.read_bytes()
    )


def test_an_entry_written_in_another_file_layout_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _source(tmp_path / "t.parquet", 500)
    cache = TaskInputCache(tmp_path / "cache", max_bytes=1 << 30)
    monkeypatch.setattr(input_cache_module, "FILE_LAYOUT_VERSION", FILE_LAYOUT_VERSION - 1)  # an older agent's entry
    older = _prepare(cache, ds, tmp_path / "task1")
    monkeypatch.undo()
    current = _prepare(cache, ds, tmp_path / "task2")
    assert current.stat().st_ino != older.stat().st_ino


def test_an_entry_written_through_a_tasks_link_is_not_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = _source(tmp_path / "t.parquet", 500)
    cache = TaskInputCache(tmp_path / "cache", max_bytes=1 << 30)
    linked = _prepare(cache, ds, tmp_path / "task1")
    original = linked.read_bytes()
    _scribble(linked)  # what a worker running as the agent's uid could do to its input
    again = _prepare(cache, ds, tmp_path / "task2")
    assert again.read_bytes() == original
    assert "changed since it was written" in caplog.text


def test_where_workers_cannot_write_an_entry_is_hashed_on_its_first_use_in_a_process_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _source(tmp_path / "t.parquet", 500)
    original = _prepare(TaskInputCache(tmp_path / "cache", max_bytes=1 << 30), ds, tmp_path / "task1")
    written = original.read_bytes()
    _scribble(original)  # left by a worker of an earlier run at a weaker level
    # The agent runs again, its workers under a uid of their own: the first use still hashes.
    cache = TaskInputCache(tmp_path / "cache", max_bytes=1 << 30)
    first = cache.prepare(ds, ds.schema(), SELECTION, tmp_path / "task2", share_categories=False,
                          workers_can_write=False).path
    assert first.read_bytes() == written
    assert "changed since it was written" in caplog.text
    # Later uses in this process trust that hash: a change now (which no worker could make) goes unseen.
    _scribble(first)
    again = cache.prepare(ds, ds.schema(), SELECTION, tmp_path / "task3", share_categories=False,
                          workers_can_write=False).path
    assert again.stat().st_ino == first.stat().st_ino and again.read_bytes() != written


def test_the_cache_keeps_to_its_size_evicting_the_least_recently_used(tmp_path: Path) -> None:
    ds = _source(tmp_path / "t.parquet", 2000)
    root = tmp_path / "cache"
    one = _prepare(TaskInputCache(root, max_bytes=1 << 30), ds, tmp_path / "probe").stat().st_size
    cache = TaskInputCache(root, max_bytes=int(one * 2.5))
    for seed in range(1, 4):
        _prepare(cache, ds, tmp_path / f"task{seed}", SELECTION.model_copy(update={"split": Split(seed=seed)}))
    held = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert len([d for d in root.iterdir() if d.is_dir()]) == 2 and held <= one * 2.5


def test_a_miss_prepared_from_the_column_store_walks_the_data_files_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry's key and the column store's are both of the files as one walk found them (a stat a file:
    for an image datasource, every image)."""
    from pod_agent.data.column_store import ColumnStore

    ds = _source(tmp_path / "t.parquet", 500)
    columns = ColumnStore(tmp_path / "state" / "columns", max_bytes=1 << 30)
    assert columns.table(ds, ds.schema()) is not None  # built at start, as the agent does
    walks = []
    identity = ds.identity
    monkeypatch.setattr(ds, "identity", lambda: walks.append(1) or identity())
    cache = TaskInputCache(tmp_path / "state" / "input-cache", max_bytes=1 << 30, columns=columns)
    prepared = _prepare(cache, ds, tmp_path / "task1")
    assert len(walks) == 1
    fresh = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "fresh", share_categories=False)
    assert prepared.read_bytes() == fresh.path.read_bytes()
