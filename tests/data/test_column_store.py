"""The column store: a pod's table encoded once; every selection prepared from it is the table's file, byte for byte."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pod_agent.config.settings import DatasourceSection
from pod_agent.data import ColumnStore, Datasource, Schema, open_datasource, prepare_task_input
from pod_agent.demo.scenario import CONTINUOUS, TARGET, prepare_sites
from pod_agent.errors import DataError
from pod_agent.protocol.messages import DataSelection, Split

# Targets of both kinds: the demo's class, other categorical columns, and continuous ones (regression).
TARGETS = [TARGET, "sex", "race", "age", "hours-per-week"]
STORE_BYTES = 1 << 30


@dataclass(frozen=True)
class Pod:
    ds: Datasource
    schema: Schema
    store: ColumnStore


def _pod(section: DatasourceSection, root: Path) -> Pod:
    ds = open_datasource(section)
    store = ColumnStore(root, max_bytes=STORE_BYTES)
    assert store.table(ds, ds.schema()) is not None  # built now, as the agent does at start
    return Pod(ds, ds.schema(), store)


@pytest.fixture(scope="module")
def adult(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pod]:
    """The demo's three pods (UCI Adult split by marital status), and the whole table read in more than one record
    batch: as CSV (two 4 MB blocks) and as a directory of three Parquet files (one batch each)."""
    root = tmp_path_factory.mktemp("adult")
    sites = prepare_sites(root / "data")
    pods = {site.name: _pod(DatasourceSection(path=site.data, force_stypes=site.force_stypes), root / site.name)
            for site in sites}
    forced = {"continuous": CONTINUOUS}
    pods["csv"] = _pod(DatasourceSection(path=root / "data" / "adult.csv", force_stypes=forced), root / "csv")
    table = pq.read_table(root / "data" / "adult.parquet")
    (root / "parts").mkdir()
    for i, (start, end) in enumerate([(0, 9000), (9000, 30000), (30000, table.num_rows)]):
        pq.write_table(table.slice(start, end - start), root / "parts" / f"{i}.parquet", row_group_size=4000)
    pods["parts"] = _pod(DatasourceSection(path=root / "parts", force_stypes=forced), root / "parts-store")
    return pods


@st.composite
def selections(draw: st.DrawFn, names: list[str]) -> tuple[DataSelection, bool]:
    """A tabular selection of the Adult columns, and the owner's share_categories."""
    target = draw(st.sampled_from(TARGETS))
    others = [n for n in names if n != target]
    if draw(st.booleans()):
        columns, ignore = None, draw(st.lists(st.sampled_from(others), max_size=3, unique=True))
    else:
        columns, ignore = draw(st.lists(st.sampled_from(others), min_size=1, max_size=8, unique=True)), []
    chosen = [n for n in (columns or others) if n not in ignore]
    scaled = draw(st.lists(st.sampled_from([n for n in chosen if n in CONTINUOUS] or ["-"]), max_size=2, unique=True))
    scaling = {n: (draw(st.floats(-100, 100)), draw(st.floats(0.01, 1e5))) for n in scaled if n != "-"}
    train, validation = draw(st.sampled_from([(70, 20), (80, 10), (100, 0), (34, 33), (1, 1)]))
    split = Split(train=train, validation=validation, test=100 - train - validation, seed=draw(st.integers(0, 2**31)))
    encoding = draw(st.sampled_from(["one-hot", "hashed"]))
    selection = DataSelection(
        target=target, columns=columns, ignore=ignore, categorical_encoding=encoding, scaling=scaling, split=split
    )
    return selection, draw(st.booleans())


def _both(pod: Pod, selection: DataSelection, out: Path, *, share_categories: bool) -> tuple[bytes, bytes]:
    """The file prepared from the datasource, and from the store after checking the store holds every column."""
    table = pod.store.table(pod.ds, pod.schema)
    assert table is not None
    needed = {selection.target, *(selection.columns or [])}
    assert needed <= table.columns  # so the second preparation is the store's, not the table's again
    read = prepare_task_input(pod.ds, pod.schema, selection, out / "read", share_categories=share_categories)
    stored = prepare_task_input(
        pod.ds, pod.schema, selection, out / "stored", share_categories=share_categories, columns=pod.store
    )
    assert stored.datastructure == read.datastructure
    return read.path.read_bytes(), stored.path.read_bytes()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_selection_of_a_demo_pod_prepared_from_the_store_is_the_tables_file(
    adult: dict[str, Pod], data: st.DataObject
) -> None:
    pod = adult[data.draw(st.sampled_from(["married", "never-married", "other"]))]
    selection, share = data.draw(selections([c.name for c in pod.schema.columns]))
    with tempfile.TemporaryDirectory() as out:
        read, stored = _both(pod, selection, Path(out), share_categories=share)
    assert stored == read


@pytest.mark.parametrize(("source", "selection"), [
    ("csv", DataSelection(target=TARGET, categorical_encoding="hashed")),
    ("csv", DataSelection(target="age", columns=["fnlwgt", "sex", "education"], split=Split(seed=3))),
    ("parts", DataSelection(target=TARGET, ignore=["fnlwgt"], scaling={"age": (40.0, 12.0)})),
    ("parts", DataSelection(
        target="race", categorical_encoding="hashed", split=Split(train=80, validation=10, test=10)
    )),
])
def test_a_table_read_in_several_batches_is_summed_and_written_batch_by_batch_alike(
    adult: dict[str, Pod], source: str, selection: DataSelection, tmp_path: Path
) -> None:
    read, stored = _both(adult[source], selection, tmp_path, share_categories=True)
    assert stored == read
    with pa.memory_map(str(tmp_path / "stored" / "data.arrow")) as file:
        assert pa.ipc.open_file(file).num_record_batches == (2 if source == "csv" else 3)


def _small_csv(path: Path) -> Datasource:
    rng = np.random.default_rng(0)
    size = rng.normal(50.0, 10.0, 600).round(3)
    colour = rng.choice(["red", "green", "blue"], 600)
    label = np.where(size > 50, "yes", "no")
    rows = "".join(f"{c},{s},{y}\n" for c, s, y in zip(colour, size, label, strict=True))
    path.write_text("colour,size,label\n" + rows)
    return open_datasource(DatasourceSection(path=path))


SMALL = DataSelection(target="label", columns=["colour", "size"])


def test_the_store_serves_the_table_it_was_built_from_until_the_files_identity_changes(tmp_path: Path) -> None:
    ds = _small_csv(tmp_path / "t.csv")
    schema, store = ds.schema(), ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES)
    before = prepare_task_input(ds, schema, SMALL, tmp_path / "a", share_categories=False).path.read_bytes()
    assert prepare_task_input(
        ds, schema, SMALL, tmp_path / "b", share_categories=False, columns=store
    ).path.read_bytes() == before
    # The same file (inode, size, mtime) with other bytes: the store still serves what it was built from,
    # which shows the preparation did not read the table.
    identity = os.stat(ds.path)
    ds.path.write_text(ds.path.read_text().replace("red,", "tan,"))
    os.utime(ds.path, ns=(identity.st_atime_ns, identity.st_mtime_ns))
    changed = prepare_task_input(ds, schema, SMALL, tmp_path / "c", share_categories=False).path.read_bytes()
    assert changed != before
    assert prepare_task_input(
        ds, schema, SMALL, tmp_path / "d", share_categories=False, columns=store
    ).path.read_bytes() == before
    # A new mtime is a changed file: the store is built again, and the old one removed.
    os.utime(ds.path, ns=(identity.st_atime_ns, identity.st_mtime_ns + 1))
    assert prepare_task_input(
        ds, schema, SMALL, tmp_path / "e", share_categories=False, columns=store
    ).path.read_bytes() == changed
    assert len(list((tmp_path / "store").iterdir())) == 1


def test_a_restarted_pod_reuses_its_store_which_is_the_agents_alone(tmp_path: Path) -> None:
    ds = _small_csv(tmp_path / "t.csv")
    assert ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES).table(ds, ds.schema()) is not None
    [kept] = (tmp_path / "store").iterdir()
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    assert stat.S_IMODE(kept.stat().st_mode) == 0o400
    inode = kept.stat().st_ino
    again = ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES).table(ds, ds.schema())  # the next process
    assert again is not None and again.columns == {"colour", "size", "label"}
    assert [p.stat().st_ino for p in (tmp_path / "store").iterdir()] == [inode]


def test_an_unreadable_store_is_built_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = _small_csv(tmp_path / "t.csv")
    assert ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES).table(ds, ds.schema()) is not None
    [kept] = (tmp_path / "store").iterdir()
    kept.chmod(0o600)
    kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 2])  # a crash or a full disk cut it short
    with caplog.at_level(logging.WARNING):
        pod = Pod(ds, ds.schema(), ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES))
        read, stored = _both(pod, SMALL, tmp_path, share_categories=False)
    assert stored == read
    assert "is unreadable" in caplog.text and "building it again" in caplog.text


def test_a_column_that_does_not_encode_is_left_out_and_a_selection_of_it_fails_as_from_the_table(
    tmp_path: Path,
) -> None:
    # Timestamps are inferred continuous but have no cast to float (see test_task_input).
    stamps = pa.array(np.arange(300) * 86_400, type=pa.timestamp("s"))
    pq.write_table(pa.table({"when": stamps, "x": np.arange(300) * 0.5, "y": ["a", "b", "c"] * 100}), tmp_path / "t.pq")
    ds = open_datasource(DatasourceSection(path=tmp_path / "t.pq"))
    pod = Pod(ds, ds.schema(), ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES))
    table = pod.store.table(ds, pod.schema)
    assert table is not None and table.columns == {"x", "y"}
    with pytest.raises(DataError, match=r"non-numeric values \(timestamp\[\w+\]\); force it to categorical"):
        prepare_task_input(ds, pod.schema, DataSelection(target="y"), tmp_path / "in", share_categories=False,
                           columns=pod.store)
    read, stored = _both(pod, DataSelection(target="y", columns=["x"]), tmp_path, share_categories=False)
    assert stored == read


def test_a_store_that_cannot_be_built_leaves_tasks_reading_the_table_and_is_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _small_csv(tmp_path / "t.csv")
    (tmp_path / "state").write_text("a file where the store's directory would be")
    store = ColumnStore(tmp_path / "state" / "column-store", max_bytes=STORE_BYTES)
    with caplog.at_level(logging.WARNING):
        for name in ("a", "b"):
            prepared = prepare_task_input(ds, ds.schema(), SMALL, tmp_path / name, share_categories=False,
                                          columns=store)
    assert prepared.path.read_bytes() == prepare_task_input(
        ds, ds.schema(), SMALL, tmp_path / "c", share_categories=False
    ).path.read_bytes()
    assert caplog.text.count("could not be built") == 1
    assert "tasks read the datasource instead" in caplog.text


def test_a_text_selection_is_read_from_the_table_with_a_store_at_hand(tmp_path: Path) -> None:
    notes = [f"note {i} " * (i % 5) for i in range(200)]
    pq.write_table(pa.table({"note": notes, "y": ["a", "b"] * 100}), tmp_path / "t.pq")
    ds = open_datasource(DatasourceSection(path=tmp_path / "t.pq", force_stypes={"text": ["note"]}))
    store = ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES)
    selection = DataSelection(target="y", columns=["note"], max_tokens=16)
    stored = prepare_task_input(ds, ds.schema(), selection, tmp_path / "a", share_categories=False, columns=store)
    read = prepare_task_input(ds, ds.schema(), selection, tmp_path / "b", share_categories=False)
    assert stored.path.read_bytes() == read.path.read_bytes()
    assert stored.datastructure["input_kind"] == "tokens"


def test_a_store_closed_by_a_stopping_agent_builds_nothing_and_leaves_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _small_csv(tmp_path / "t.csv")
    store = ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES)
    store.close()
    with caplog.at_level(logging.WARNING):
        assert store.table(ds, ds.schema()) is None
    assert list((tmp_path / "store").iterdir()) == []
    assert "the agent is stopping" in caplog.text


def test_a_table_whose_store_would_be_over_its_size_is_read_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _small_csv(tmp_path / "t.csv")  # 600 rows of 3 columns: 14,400 bytes encoded
    store = ColumnStore(tmp_path / "store", max_bytes=14_000)
    with caplog.at_level(logging.WARNING):
        assert store.table(ds, ds.schema()) is None
    assert "its 14400 bytes would be over the 14000 it may take" in caplog.text
    assert not (tmp_path / "store").exists()
    assert ColumnStore(tmp_path / "store", max_bytes=14_400).table(ds, ds.schema()) is not None


def test_a_table_without_tabular_columns_stores_nothing_and_warns_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pq.write_table(pa.table({"note": [f"line {i}" for i in range(50)]}), tmp_path / "t.pq")
    ds = open_datasource(DatasourceSection(path=tmp_path / "t.pq", force_stypes={"text": ["note"]}))
    with caplog.at_level(logging.WARNING):
        table = ColumnStore(tmp_path / "store", max_bytes=STORE_BYTES).table(ds, ds.schema())
    assert table is not None and table.columns == frozenset()
    assert caplog.text == "" and not (tmp_path / "store").exists()
