"""Image and text columns become a task's prepared input: decoded by the agent, only from under the owner's
images directory, within the owner's bounds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pod_agent.config import DatasourceSection, ImagesSection, TextSection
from pod_agent.data import (
    DATA_FILE_NAME,
    ROW_SHAPE_METADATA_KEY,
    open_datasource,
    plan_datastructure,
    prepare_task_input,
)
from pod_agent.data.shapes import CLASSES, write_shapes, write_shapes_table
from pod_agent.errors import DataError
from pod_agent.protocol import DataSelection

PER_CLASS = 8
CANARY = b"canary: a file outside the images directory"


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    return tmp_path / "images", write_shapes(tmp_path / "images", per_class=PER_CLASS)


def _table(tmp_path: Path, rows: list[tuple[str, str]], **images: object) -> DatasourceSection:
    return DatasourceSection(
        path=write_shapes_table(tmp_path / "table.csv", rows), force_stypes={"image": ["image"], "text": ["caption"]},
        images=ImagesSection(dir=tmp_path / "images", **images), text=TextSection(max_tokens=24),
    )


def _prepare(section: DatasourceSection, selection: DataSelection, out: Path) -> tuple[np.ndarray, dict[str, object]]:
    ds = open_datasource(section)
    prepared = prepare_task_input(ds, ds.schema(), selection, out, share_categories=False)
    with pa.memory_map(str(out / DATA_FILE_NAME)) as source:
        table = pa.ipc.open_file(source).read_all()
    field = table.schema.field("x")
    shape = json.loads((field.metadata or {})[ROW_SHAPE_METADATA_KEY])
    x = np.asarray(table.column("x").combine_chunks().flatten().to_numpy()).reshape(len(table), *shape)
    return x, prepared.datastructure


def test_an_image_column_is_decoded_and_resized_into_the_prepared_input(tmp_path: Path, images: object) -> None:
    _, rows = images  # type: ignore[misc]
    selection = DataSelection(target="label", columns=["image"], image_size=(14, 12))
    x, structure = _prepare(_table(tmp_path, rows), selection, tmp_path / "out")
    # uint8 pixels in the file (the training side's batches scale them to [0, 1]).
    assert x.shape == (len(rows), 1, 14, 12) and x.dtype == np.uint8
    assert x.max() > 150 and x.std() > 10
    assert structure["input_kind"] == "image" and structure["image_shape"] == [1, 14, 12]
    assert structure["input_size"] == 14 * 12 and structure["n_classes"] == len(CLASSES)
    # The modeller plans the same datastructure from the schema and the selection alone.
    ds = open_datasource(_table(tmp_path, rows))
    planned = plan_datastructure(ds.schema(), selection.model_copy(update={"image_mode": "L"}), share_categories=False)
    assert {k: planned[k] for k in ("input_size", "image_shape")} == {"input_size": 168, "image_shape": [1, 14, 12]}


def test_a_folder_per_class_layout_is_a_table_of_image_paths_and_labels(tmp_path: Path, images: object) -> None:
    root, _ = images  # type: ignore[misc]
    section = DatasourceSection(path=root, format="image-folders", images=ImagesSection(dir=root, mode="RGB"))
    schema = open_datasource(section).schema()
    assert [(c.name, c.stype) for c in schema.columns] == [("image", "image"), ("label", "categorical")]
    assert schema.columns[1].categories == list(CLASSES) and schema.row_count == PER_CLASS * len(CLASSES)
    x, _ = _prepare(section, DataSelection(target="label", columns=["image"]), tmp_path / "out")
    assert x.shape == (PER_CLASS * len(CLASSES), 3, 28, 28)


def test_an_image_size_over_the_owners_bound_is_refused(tmp_path: Path, images: object) -> None:
    _, rows = images  # type: ignore[misc]
    selection = DataSelection(target="label", columns=["image"], image_size=(64, 64))
    with pytest.raises(DataError, match=r"image_size \[64, 64\] is over this pod's datasource.images.max_size"):
        _prepare(_table(tmp_path, rows, max_size=(32, 32)), selection, tmp_path / "out")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param("ABSOLUTE", "is not a plain relative path", id="absolute"),
        pytest.param("../outside/canary.png", "is not a plain relative path", id="dot-dot"),
        pytest.param("circle/link.png", "is or passes a symlink, which is refused", id="symlinked-file"),
        pytest.param("linked-dir/canary.png", "is or passes a symlink, which is refused", id="symlinked-directory"),
        pytest.param("circle", "is not a regular file", id="a-directory"),
    ],
)
def test_a_row_naming_a_file_outside_the_images_directory_fails_the_task_and_reads_nothing(
    tmp_path: Path, images: object, path: str, message: str
) -> None:
    root, rows = images  # type: ignore[misc]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.png").write_bytes(CANARY)
    os.symlink(outside / "canary.png", root / "circle" / "link.png")
    os.symlink(outside, root / "linked-dir")
    bad = str(outside / "canary.png") if path == "ABSOLUTE" else path
    with pytest.raises(DataError, match=message):
        _prepare(_table(tmp_path, [*rows, (bad, "circle")]), DataSelection(target="label", columns=["image"]),
                 tmp_path / "out")
    assert not (tmp_path / "out" / DATA_FILE_NAME).exists() or CANARY not in (
        tmp_path / "out" / DATA_FILE_NAME).read_bytes()


def test_a_text_column_becomes_token_ids_bytes_or_a_signed_vocabulary(tmp_path: Path, images: object) -> None:
    _, rows = images  # type: ignore[misc]
    section = _table(tmp_path, rows)
    by_bytes, structure = _prepare(section, DataSelection(target="label", columns=["caption"]), tmp_path / "bytes")
    assert by_bytes.shape == (len(rows), 24) and by_bytes.dtype == np.int32
    assert structure["input_kind"] == "tokens" and structure["vocab_size"] == 258
    assert by_bytes.max() < 258 and (by_bytes[:, 0] > 1).all()
    vocabulary = ["round", "ring", "box", "plus"]
    by_words, structure = _prepare(
        section, DataSelection(target="label", columns=["caption"], max_tokens=8, vocabulary=vocabulary),
        tmp_path / "words",
    )
    assert by_words.shape == (len(rows), 8) and structure["vocab_size"] == len(vocabulary) + 2
    # Five words per caption: five ids (known words 2.., others UNK = 1), then padding.
    assert ((by_words[:, :5] >= 1).all() and (by_words[:, 5:] == 0).all())
    assert set(np.unique(by_words[:, :5])) <= {1, 2, 3, 4, 5}


def test_more_tokens_than_the_owner_allows_and_a_media_column_among_others_are_refused(
    tmp_path: Path, images: object
) -> None:
    _, rows = images  # type: ignore[misc]
    section = _table(tmp_path, rows)
    with pytest.raises(DataError, match="max_tokens 100 is over this pod's datasource.text.max_tokens 24"):
        _prepare(section, DataSelection(target="label", columns=["caption"], max_tokens=100), tmp_path / "a")
    with pytest.raises(DataError, match="it must be the selection's only column"):
        _prepare(section, DataSelection(target="label", columns=["caption", "image"]), tmp_path / "b")
