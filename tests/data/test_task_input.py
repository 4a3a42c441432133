"""Preparing a task's input: encoding, deterministic stratified split, streaming, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pod_agent.config.settings import DatasourceSection
from pod_agent.data import Datasource, Schema, dense_x, open_datasource
from pod_agent.data import task_input as task_input_module
from pod_agent.data.task_input import (
    HASHED_BUCKETS,
    assign_splits,
    plan_datastructure,
    prepare_task_input,
    read_datastructure,
)
from pod_agent.errors import DataError
from pod_agent.protocol.messages import DataSelection, Split


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=n)
    size = rng.normal(50.0, 10.0, size=n)
    label = np.where(size + rng.normal(0, 5, size=n) > 55, "yes", "no")
    sizes = pa.array(size, mask=rng.random(n) < 0.05)
    return pa.table({"colour": colour, "size": sizes, "note": [f"free text {i}" for i in range(n)], "label": label})


def _source(tmp_path: Path, table: pa.Table, name: str = "t.parquet") -> Datasource:
    path = tmp_path / name
    pq.write_table(table, path)
    return open_datasource(DatasourceSection(path=path, force_stypes={"text": ["note"]}))


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    return dense_x(table), table.column("y").to_numpy(), table.column("split").to_numpy()


SELECTION = DataSelection(target="label", columns=["colour", "size"])


def test_categoricals_are_one_hot_with_a_reserved_slot_and_continuous_standardised(tmp_path: Path) -> None:
    ds = _source(tmp_path, _table(3000))
    prepared = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "out", share_categories=False)
    structure = prepared.datastructure
    assert structure["feature_names"] == ["colour=#0", "colour=#1", "colour=#2", "colour=#other", "size"]
    assert structure["input_size"] == 5 and structure["n_classes"] == 2
    assert structure["target_categories"] == ["#0", "#1"]
    x, y, split = _read(prepared.path)
    assert x.dtype == np.float32 and set(np.unique(y)) == {0, 1}
    np.testing.assert_array_equal(x[:, :4].sum(axis=1), 1.0)
    assert not x[:, 3].any()
    train_size = x[split == 0, 4]
    assert abs(train_size.mean()) < 0.05 and abs(train_size.std() - 1) < 0.05
    assert read_datastructure(prepared.path) == structure


def test_shared_categories_name_slots_and_classes_by_value(tmp_path: Path) -> None:
    ds = _source(tmp_path, _table(300))
    shared = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "shared", share_categories=True)
    hidden = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "hidden", share_categories=False)
    assert shared.datastructure["feature_names"] == [
        "colour=blue",
        "colour=green",
        "colour=red",
        "colour=<other>",
        "size",
    ]
    assert shared.datastructure["target_categories"] == ["no", "yes"]
    np.testing.assert_array_equal(_read(shared.path)[0], _read(hidden.path)[0])


def test_a_value_the_schema_does_not_list_takes_the_reserved_slot(tmp_path: Path) -> None:
    ds = _source(tmp_path, _table(500))
    schema = ds.schema()
    narrowed = schema.model_copy(update={"columns": [
        c.model_copy(update={"categories": ["blue", "green"]}) if c.name == "colour" else c for c in schema.columns
    ]})
    x, _, _ = _read(prepare_task_input(ds, narrowed, SELECTION, tmp_path / "out", share_categories=False).path)
    reds = _table(500).column("colour").to_numpy(zero_copy_only=False) == "red"
    assert (x[reds, 2] == 1).all() and not x[~reds, 2].any()


def test_split_is_stratified_exact_per_block_and_reproducible(tmp_path: Path) -> None:
    ds = _source(tmp_path, _table(5000))
    selection = SELECTION.model_copy(update={"split": Split(train=70, validation=20, test=10, seed=3)})
    first = prepare_task_input(ds, ds.schema(), selection, tmp_path / "a", share_categories=False)
    second = prepare_task_input(ds, ds.schema(), selection, tmp_path / "b", share_categories=False)
    assert first.path.read_bytes() == second.path.read_bytes()
    _, y, split = _read(first.path)
    for label in (0, 1):
        shares = np.bincount(split[y == label], minlength=3) / (y == label).sum()
        np.testing.assert_allclose(shares, [0.7, 0.2, 0.1], atol=0.02)
    assert first.datastructure["n_rows"] == {
        "train": int((split == 0).sum()), "validation": int((split == 1).sum()), "test": int((split == 2).sum())
    }
    other_seed = selection.model_copy(update={"split": Split(train=70, validation=20, test=10, seed=4)})
    _, _, other = _read(prepare_task_input(ds, ds.schema(), other_seed, tmp_path / "c", share_categories=False).path)
    assert (other != split).any()


def test_streaming_in_small_batches_gives_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _source(tmp_path, _table(2000))
    whole = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "whole", share_categories=False)
    monkeypatch.setattr(task_input_module, "_READ_BATCH_ROWS", 128)
    pieces = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "pieces", share_categories=False)
    for a, b in zip(_read(whole.path), _read(pieces.path), strict=True):
        np.testing.assert_array_equal(a, b)
    with pa.memory_map(str(pieces.path)) as source:
        assert pa.ipc.open_file(source).num_record_batches == 16


def test_hashed_categories_mean_the_same_slot_on_pods_with_different_categories(tmp_path: Path) -> None:
    table = _table(1000)
    colour = table.column("colour").to_numpy(zero_copy_only=False)
    pods = [table.filter(pa.array(colour != "red")), table.filter(pa.array(colour != "blue"))]
    slots = []
    for i, part in enumerate(pods):
        ds = _source(tmp_path, part, name=f"pod{i}.parquet")
        hashed = SELECTION.model_copy(update={"categorical_encoding": "hashed"})
        prepared = prepare_task_input(ds, ds.schema(), hashed, tmp_path / f"p{i}", share_categories=False)
        assert prepared.datastructure["input_size"] == HASHED_BUCKETS + 1
        x, _, _ = _read(prepared.path)
        part_colour = part.column("colour").to_numpy(zero_copy_only=False)
        slots.append(int(np.argmax(x[part_colour == "green"][0, :HASHED_BUCKETS])))
    assert slots[0] == slots[1]


def test_rows_with_a_missing_target_are_dropped_and_counted(tmp_path: Path) -> None:
    table = _table(400)
    labels = table.column("label").to_pylist()
    labels[:7] = [None] * 7
    table = table.set_column(3, "label", pa.array(labels))
    ds = _source(tmp_path, table)
    prepared = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "out", share_categories=False)
    assert prepared.datastructure["n_dropped"] == 7
    assert sum(prepared.datastructure["n_rows"].values()) == 393  # type: ignore[attr-defined]


def test_assigned_splits_are_the_prepared_files_row_by_row_with_dropped_rows_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(1500)
    labels = table.column("label").to_pylist()
    labels[10:13] = [None] * 3
    ds = _source(tmp_path, table.set_column(3, "label", pa.array(labels)))
    prepared = prepare_task_input(ds, ds.schema(), SELECTION, tmp_path / "out", share_categories=False)
    monkeypatch.setattr(task_input_module, "_READ_BATCH_ROWS", 100)  # batch boundaries must not matter
    codes = assign_splits(ds, ds.schema(), SELECTION)
    assert len(codes) == 1500 and list(np.flatnonzero(codes == -1)) == [10, 11, 12]
    np.testing.assert_array_equal(codes[codes >= 0], _read(prepared.path)[2])


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (DataSelection(target="nope"), "target column 'nope' is not in the datasource"),
        (DataSelection(target="label", columns=["colour", "nope"]), "column 'nope' is not in the datasource"),
        # A text (or image) column is a task's only feature (pod_agent.data.text), never one among tabular ones.
        (DataSelection(target="label", columns=["colour", "note"]), "'note' is a text column; it must be the "
                                                                     "selection's only column"),
        (DataSelection(target="label", columns=["label", "size"]), "column 'label' is the target"),
        (DataSelection(target="label", columns=[]), "leaves no feature column"),
    ],
)
def test_unusable_selections_name_the_column(tmp_path: Path, selection: DataSelection, message: str) -> None:
    ds = _source(tmp_path, _table(50))
    with pytest.raises(DataError, match=message):
        prepare_task_input(ds, ds.schema(), selection, tmp_path / "out", share_categories=False)


def test_columns_default_to_every_tabular_column_but_the_target(tmp_path: Path) -> None:
    ds = _source(tmp_path, _table(100))
    prepared = prepare_task_input(
        ds, ds.schema(), DataSelection(target="label"), tmp_path / "out", share_categories=False
    )
    assert prepared.datastructure["columns"] == ["colour", "size"]


@pytest.mark.parametrize("share_categories", [False, True])
@pytest.mark.parametrize("encoding", ["one-hot", "hashed"])
def test_the_modellers_plan_from_the_public_schema_matches_the_prepared_one_but_for_row_counts(
    tmp_path: Path, encoding: str, share_categories: bool
) -> None:
    ds = _source(tmp_path, _table(300))
    selection = SELECTION.model_copy(update={"categorical_encoding": encoding})
    public = ds.schema().public(share_categories)
    assert Schema.public_shares_categories(public) is share_categories
    planned = plan_datastructure(Schema.from_public(public), selection, share_categories=share_categories)
    prepared = prepare_task_input(
        ds, ds.schema(), selection, tmp_path / "out", share_categories=share_categories
    ).datastructure
    assert planned["n_rows"] == {"train": 0, "validation": 0, "test": 0}
    unchanging = set(prepared) - {"n_rows", "n_dropped"}
    assert {k: planned[k] for k in unchanging} == {k: prepared[k] for k in unchanging}


def test_cohort_scaling_replaces_the_pods_own_moments(tmp_path: Path) -> None:
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0] * 25, "y": ["a", "b"] * 50})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    ds = open_datasource(DatasourceSection(path=path, force_stypes={"continuous": ["x"]}))
    selection = DataSelection(target="y", split=Split(train=100, validation=0, test=0), scaling={"x": (10.0, 2.0)})
    prepared = prepare_task_input(ds, ds.schema(), selection, tmp_path / "in", share_categories=False)
    x, _, _ = _read(prepared.path)
    assert sorted(set(x.reshape(-1).tolist())) == [-4.5, -4.0, -3.5, -3.0]


def test_scaling_a_column_that_is_not_a_continuous_feature_is_refused(tmp_path: Path) -> None:
    table = pa.table({"x": [1.0, 2.0] * 50, "y": ["a", "b"] * 50})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    ds = open_datasource(DatasourceSection(path=path))
    selection = DataSelection(target="y", scaling={"z": (0.0, 1.0)})
    with pytest.raises(DataError, match=r"scaling names \['z'\]"):
        prepare_task_input(ds, ds.schema(), selection, tmp_path / "in", share_categories=False)


def test_a_continuous_column_that_is_not_numeric_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # Timestamps are inferred continuous but have no cast to float: the one way a continuous
    # column reaches the encoder unconvertible (forced string columns are refused at the source).
    stamps = pa.array(np.arange(100) * 86_400, type=pa.timestamp("s"))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"when": stamps, "y": ["a", "b"] * 50}), path)
    ds = open_datasource(DatasourceSection(path=path))
    assert ds.schema().column("when").stype == "continuous"
    with pytest.raises(DataError, match=r"non-numeric values \(timestamp\[\w+\]\); force it to categorical"):
        prepare_task_input(ds, ds.schema(), DataSelection(target="y"), tmp_path / "in", share_categories=False)
