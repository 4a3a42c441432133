"""A task's prepared input: selected columns encoded into one Arrow IPC file in scratch.

Owns turning the pod's datasource into what the sandbox may read (``data.arrow``):
the selected feature columns encoded (tabular rows compactly, each standing for one
float32 vector of ``input_size``: see File layout), the encoded target, and a
deterministic train/validation/test split column. The sandbox never sees the original
file; what it trains on is only this. Reading the datasource is ``datasource.py``'s job
(``csvsource.py``, ``parquetsource.py``); what trains on the file is ``pod_agent.training``.

Two streaming passes over ``ds.batches``, so a table larger than RAM still works:
pass 1 assigns splits and gathers class counts and the training rows' mean and
standard deviation of each continuous column; pass 2 encodes and writes batch by
batch, with the splits pass 1 assigned. Memory is one record batch plus O(columns)
statistics and one byte per row (its split). Given the pod's column store
(``column_store.py``: each column's encoded values, computed once when the agent starts),
a tabular selection's passes go over its memory-mapped batches instead, which are the
datasource's, already encoded: the same sums and the same file, without reading the table.

Encoding (recorded in the datastructure, documented here once):
- continuous -> float32, standardised with the *training* rows' mean and standard
  deviation (a constant column keeps std 1), or with the (mean, std) the task's
  ``selection.scaling`` fixes for the whole cohort; missing values become 0 (the mean).
- categorical, ``categorical_encoding="one-hot"`` (default) -> one slot per category
  of the pod's schema (sorted, as strings) plus one reserved last slot for a value
  the schema does not list and for missing values. Its width depends on the schema's
  categories, so pods whose category sets differ produce different ``input_size``.
- categorical, ``categorical_encoding="hashed"`` -> a fixed ``HASHED_BUCKETS`` slots
  per column, the slot chosen by sha256 of the value; missing values set no slot.
  The width and the meaning of a slot are the same on every pod whatever categories
  it holds, which is what federated averaging across differing pods needs, and it
  needs no category values from anyone (``privacy.share_categories = false`` works).
- target: categorical -> int64 index into the schema's sorted categories;
  continuous -> float32 (regression). Rows with a missing or unlisted target are
  dropped and counted in ``n_dropped``.

Names (``feature_names``, ``target_categories``): the datastructure enters the sandbox,
and a hostile model can hide any string it sees in what it returns, so category values
are named only where the owner shares them (``privacy.share_categories``, passed in as
``share_categories``). Shared: ``colour=red`` ... ``colour=<other>`` and the target's
class names. Not shared: the index stands in, ``colour=#0`` ... ``colour=#other`` and
``#0``, ``#1`` ...: the same names a modeller plans from the public schema's
``n_categories`` placeholders, so a model built from ``plan_datastructure`` fits. Hashed
columns are named by bucket (``colour#17``) either way; they hold no values.
- split: per target class, rows are taken in blocks of 100 and each block's slots
  are a seeded permutation of ``train`` x 0, ``validation`` x 1, ``test`` x 2. The
  percentages are therefore exact per class for every full block (stratified), the
  assignment is reproducible from ``split.seed`` and the row order, and it needs
  only one counter per class.

Images and text (``_Media``): a selection may name one image or one text column as its only feature.
- image -> the agent reads each row's file under ``datasource.images.dir`` (``images.py``: paths checked,
  symlinks refused), decodes and resizes it to ``selection.image_size`` (else the owner's size, within the
  owner's ``max_size``) in ``selection.image_mode`` (else the owner's); ``x`` holds the pixels channels
  first as uint8 (batches scale them to float32 in [0, 1]), the datastructure ``image_shape``
  ``[channels, height, width]``.
- text -> token ids (``text.py``): ``x`` holds int32 ``[max_tokens]``, the datastructure ``vocab_size``.
A planned datastructure (``plan_datastructure``, no pod config at hand) needs the task to name the image
size and mode, or the token count.

File layout (Arrow IPC file, memory-mappable): ``x``, ``y: int64`` (or ``float32`` for regression),
``split: int8`` (0 train, 1 validation, 2 test), then for tabular rows ``slots``. Tabular rows are
compact (``tabular_layout.py``): ``x: fixed_size_list<float32>[n_continuous]`` holds the continuous
values and ``slots: fixed_size_list<int32>[n_categorical]`` the one dense position each categorical
column sets (-1: none), with ``input_size`` and the continuous values' positions in ``x``'s field
metadata ``pod_agent.layout``; readers expand rows to the dense float32 ``[rows, input_size]`` the
datastructure describes (``dense_x``; the sandbox per mini-batch). For images and text ``x`` is
``fixed_size_list[input_size]`` with the field metadata ``pod_agent.shape`` (the shape of one row,
JSON) and holds uint8 pixels for images, int32 token ids for text. The datastructure JSON is also
stored in the schema metadata under ``pod_agent.datastructure``. ``FILE_LAYOUT_VERSION`` names this
layout, so that a cache of prepared files never serves one written in another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pod_agent.config import DatasourceSection, ImagesSection
from pod_agent.data.column_store import (
    HASHED_BUCKETS,
    READ_BATCH_ROWS,
    ColumnStore,
    EncodedBatch,
    RawColumns,
    category_indexes,
)
from pod_agent.data.images import ImageFormat, ImageReader, images_section
from pod_agent.data.tabular_layout import SLOTS_COLUMN, TabularLayout
from pod_agent.data.text import TextTokens
from pod_agent.errors import DataError
from pod_agent.protocol import DataSelection

if TYPE_CHECKING:
    from pod_agent.data import Datasource, Schema
    from pod_agent.data.datasource import FileIdentity

DATA_FILE_NAME = "data.arrow"
# What prepare_task_input writes (see File layout); part of the input cache's key, bumped when that changes.
FILE_LAYOUT_VERSION = 2
DATASTRUCTURE_METADATA_KEY = b"pod_agent.datastructure"
ROW_SHAPE_METADATA_KEY = b"pod_agent.shape"
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
_SPLIT_BLOCK_ROWS = 100  # split percentages are integers summing to 100
_READ_BATCH_ROWS = READ_BATCH_ROWS  # the column store's batches are the datasource's, read alike
_FEATURE_STYPES = ("categorical", "continuous")
_MEDIA_STYPES = ("image", "text")
# Values of x held in memory per record batch while images or text are encoded (32 MiB of float32).
_MEDIA_BATCH_VALUES = 8 << 20
# Label of the one-hot slot for an unlisted or missing value: "<other>" where values are
# shared (as before the index names existed), "#other" where the slots are named "#<index>".
_OTHER_SHARED = "<other>"
_OTHER_BY_INDEX = "#other"

CategoricalEncoding = Literal["one-hot", "hashed"]


@dataclass(frozen=True)
class TaskInput:
    """Where the prepared file lies and the datastructure the model is built from."""

    path: Path
    datastructure: dict[str, object] = field(default_factory=dict)


@dataclass
class _ColumnPlan:
    name: str
    stype: str
    categories: list[str]
    width: int
    hashed: bool = False
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class _Media:
    """The one image or text column a selection names, and what each row of it becomes."""

    column: str
    image: ImageFormat | None = None
    tokens: TextTokens | None = None

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.image.shape if self.image is not None else (self.tokens.max_tokens,)  # type: ignore[union-attr]

    @property
    def width(self) -> int:
        return int(np.prod(self.row_shape))

    def describe(self) -> dict[str, object]:
        if self.image is not None:
            return {"input_kind": "image", "image_shape": list(self.image.shape)}
        return {"input_kind": "tokens", "vocab_size": self.tokens.vocab_size}  # type: ignore[union-attr]


class _Splitter:
    """Per-class block permutation assignment (see the module docstring)."""

    def __init__(self, *, train: int, validation: int, test: int, seed: int) -> None:
        self._slots = np.array([0] * train + [1] * validation + [2] * test, dtype=np.int8)
        self._seed = seed
        self._seen: dict[int, int] = {}

    def assign(self, classes: np.ndarray) -> np.ndarray:
        out = np.empty(len(classes), dtype=np.int8)
        for cls in np.unique(classes):
            rows = np.flatnonzero(classes == cls)
            start = self._seen.get(int(cls), 0)
            self._seen[int(cls)] = start + len(rows)
            # A class's rows are consecutive counters, so its blocks are a run: one permutation per block,
            # stacked, and one gather for all rows (not a pass over the rows per block).
            counters = np.arange(start, start + len(rows))
            first, last = start // _SPLIT_BLOCK_ROWS, (start + len(rows) - 1) // _SPLIT_BLOCK_ROWS
            perms = np.stack([
                np.random.default_rng([self._seed, int(cls), block]).permutation(_SPLIT_BLOCK_ROWS)
                for block in range(first, last + 1)
            ])
            out[rows] = self._slots[perms[counters // _SPLIT_BLOCK_ROWS - first, counters % _SPLIT_BLOCK_ROWS]]
        return out


def prepare_task_input(
    ds: Datasource,
    schema: Schema,
    selection: DataSelection,
    out_dir: Path,
    *,
    share_categories: bool,
    columns: ColumnStore | None = None,
    files: FileIdentity | None = None,
) -> TaskInput:
    """Write ``out_dir/data.arrow`` for ``selection`` and return it with its datastructure.

    The categorical encoding is ``selection.categorical_encoding`` (signed in the task);
    ``share_categories`` is the owner's ``privacy.share_categories`` (see Names above).
    ``columns``, the pod's column store: a tabular selection is read from its encoded table
    (built first if the data files changed since) when it holds every selected column, and the
    file is the same as one read from the datasource; images and text are read from the datasource.
    ``files``: the data files' ``ds.identity()`` where the caller has just read it (not read again).

    Raises DataError naming the column when a selected column is missing, is the
    target, or has a semantic type that cannot be a tabular feature (text, image),
    and when no row has a usable target.
    """
    encoding: CategoricalEncoding = selection.categorical_encoding
    media = _media(schema, selection, ds.section)
    plans, target = _plan(schema, selection, encoding, media)
    unscalable = sorted(set(selection.scaling) - {p.name for p in plans if p.stype == "continuous"})
    if unscalable:
        raise DataError(f"task input: scaling names {unscalable}, which are not selected continuous columns")
    split = selection.split
    task = "classification" if target.stype == "categorical" else "regression"
    rows = _rows(ds, schema, [*(p.name for p in plans), target.name], media=media, columns=columns, files=files)

    # Pass 1: split assignment, class counts, training-row moments of continuous columns.
    # Categorical columns are not read until pass 2. Columns the task scales need no moments
    # but are still cast, so that a non-numeric one fails here, before anything is written.
    continuous = [p.name for p in plans if p.stype == "continuous"]
    splitter = _Splitter(train=split.train, validation=split.validation, test=split.test, seed=split.seed)
    sums = {name: np.zeros(3, dtype=np.float64) for name in continuous if name not in selection.scaling}
    n_rows = dict.fromkeys(SPLIT_CODES, 0)
    n_dropped = 0
    assigned_parts = []
    for batch in rows([*continuous, target.name]):
        y, keep = _encode_target(batch, target)
        n_dropped += int((~keep).sum())
        assigned = splitter.assign(_strata(y[keep], task))
        assigned_parts.append(assigned)
        for name, code in SPLIT_CODES.items():
            n_rows[name] += int((assigned == code).sum())
        train_rows = np.flatnonzero(keep)[assigned == 0]
        for name in continuous:
            values = batch.floats(name)
            if name in sums:
                values = values[train_rows]
                values = values[~np.isnan(values)]
                sums[name] += (len(values), values.sum(), np.square(values).sum())
    if sum(n_rows.values()) == 0:
        raise DataError(
            f"task input: no row has a usable value in target column {target.name!r}; "
            "check the target column and its categories"
        )
    for plan in plans:
        if plan.stype == "continuous" and plan.name in selection.scaling:
            plan.mean, plan.std = selection.scaling[plan.name]
        elif plan.stype == "continuous":
            count, total, total_sq = sums[plan.name]
            if count > 0:
                plan.mean = float(total / count)
                var = max(float(total_sq / count) - plan.mean**2, 0.0)
                plan.std = float(np.sqrt(var)) if var > 1e-12 else 1.0

    datastructure = _datastructure(
        plans, target, task=task, encoding=encoding, n_rows=n_rows, n_dropped=n_dropped, selection=selection,
        share_categories=share_categories, media=media,
    )
    y_type = pa.int64() if task == "classification" else pa.float32()
    input_size = int(datastructure["input_size"])  # type: ignore[call-overload]
    x_field, extra_fields = _x_fields(plans, media, input_size)
    arrow_schema = pa.schema(
        [x_field, ("y", y_type), ("split", pa.int8()), *extra_fields],
        metadata={DATASTRUCTURE_METADATA_KEY: json.dumps(datastructure, sort_keys=True).encode()},
    )

    # Pass 2: encode and write, one record batch at a time, each kept row with the split pass 1 gave it
    # (assigning again would cost as much as pass 1's assignment: one seeded permutation per block).
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out_dir / DATA_FILE_NAME, arrow_schema, target, np.concatenate(assigned_parts), ds.path)
    names = [p.name for p in plans] + [target.name]
    if media is None:
        layout = _layout(plans)
        writer.write(rows(names), lambda batch, keep: list(layout.arrays(*_encode_features(batch, plans, keep))))
    else:
        read_rows = max(1, min(_READ_BATCH_ROWS, _MEDIA_BATCH_VALUES // media.width))
        indexes = category_indexes(schema)
        encode = _media_encoder(media, ds.section)
        writer.write(
            (RawColumns(batch, indexes) for batch in _batches(ds, names, rows=read_rows)),
            lambda batch, keep: [
                pa.FixedSizeListArray.from_arrays(
                    pa.array(encode(batch.batch.filter(pa.array(keep))).reshape(-1)), input_size
                )
            ],
        )
    return TaskInput(path=writer.path, datastructure=datastructure)


def _rows(
    ds: Datasource, schema: Schema, names: list[str], *, media: _Media | None, columns: ColumnStore | None,
    files: FileIdentity | None,
) -> Callable[[list[str]], Iterable[EncodedBatch]]:
    """What reads the named columns' record batches in encoded terms: the column store's table where it holds
    every one of ``names`` (a tabular selection), else the datasource's batches, encoded as they are read."""
    if media is None and columns is not None:
        table = columns.table(ds, schema, files=files)
        if table is not None and table.columns.issuperset(names):
            return lambda _: table.batches()
    indexes = category_indexes(schema)
    return lambda wanted: (RawColumns(batch, indexes) for batch in _batches(ds, wanted, rows=_READ_BATCH_ROWS))


_Batch = TypeVar("_Batch", bound=EncodedBatch)


class _Writer:
    """Pass 2's file: each record batch's kept rows, with the splits pass 1 assigned them in row order."""

    def __init__(self, path: Path, schema: pa.Schema, target: _ColumnPlan, splits: np.ndarray, source: Path) -> None:
        self.path, self._schema, self._target, self._splits, self._source = path, schema, target, splits, source

    def write(
        self, batches: Iterable[_Batch], encode_x: Callable[[_Batch, np.ndarray], list[pa.Array]]
    ) -> None:
        """Write every batch's kept rows: ``encode_x`` gives the ``x`` column (and those after ``split``) of a
        batch's rows where ``keep`` is set."""
        classification = self._target.stype == "categorical"
        taken = 0
        with pa.OSFile(str(self.path), "wb") as sink, pa.ipc.new_file(sink, self._schema) as writer:
            for batch in batches:
                y, keep = _encode_target(batch, self._target)
                n_kept = int(keep.sum())
                if not n_kept:
                    continue
                assigned, taken = self._splits[taken : taken + n_kept], taken + n_kept
                if len(assigned) < n_kept:
                    raise DataError(
                        f"task input: datasource {self._source} changed while it was read; prepare it again"
                    )
                x, *extra = encode_x(batch, keep)
                y_kept = pa.array(y[keep].astype(np.int64 if classification else np.float32))
                writer.write_batch(pa.record_batch([x, y_kept, pa.array(assigned), *extra], schema=self._schema))


def assign_splits(ds: Datasource, schema: Schema, selection: DataSelection) -> np.ndarray:
    """The split code ``prepare_task_input`` gives each row of ``ds`` (in row order), -1 for a dropped row.

    Lets a baseline on the host that holds a copy of the pods' tables leave out exactly
    the rows the pods test on; it reads only the target column.
    """
    _, target = _plan(schema, selection, selection.categorical_encoding, _media(schema, selection, ds.section))
    split = selection.split
    task = "classification" if target.stype == "categorical" else "regression"
    splitter = _Splitter(train=split.train, validation=split.validation, test=split.test, seed=split.seed)
    parts = []
    indexes = category_indexes(schema)
    for batch in _batches(ds, [target.name], rows=_READ_BATCH_ROWS):
        y, keep = _encode_target(RawColumns(batch, indexes), target)
        codes = np.full(len(keep), -1, dtype=np.int8)
        codes[keep] = splitter.assign(_strata(y[keep], task))
        parts.append(codes)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int8)


def plan_datastructure(schema: Schema, selection: DataSelection, *, share_categories: bool) -> dict[str, object]:
    """The datastructure ``prepare_task_input`` would return, from the schema alone.

    Sizes, names and encoding are exact; ``n_rows`` and ``n_dropped`` are 0 because no
    data is read. A modeller uses it to build a model (and its initial weights) before
    any pod prepares data, from ``Schema.from_public`` of the pod's registered schema
    with ``share_categories=public_shares_categories(...)`` of the same; with one-hot
    encoding it holds only for pods with this schema's categories (or their count,
    where they are not shared).
    """
    encoding: CategoricalEncoding = selection.categorical_encoding
    media = _media(schema, selection, None)
    plans, target = _plan(schema, selection, encoding, media)
    task = "classification" if target.stype == "categorical" else "regression"
    return _datastructure(
        plans, target, task=task, encoding=encoding, n_rows=dict.fromkeys(SPLIT_CODES, 0), n_dropped=0,
        selection=selection, share_categories=share_categories, media=media,
    )


def read_datastructure(path: Path) -> dict[str, object]:
    """The datastructure stored in a prepared file's metadata."""
    with pa.memory_map(str(path), "r") as source:
        metadata = pa.ipc.open_file(source).schema.metadata or {}
    raw = metadata.get(DATASTRUCTURE_METADATA_KEY)
    if raw is None:
        raise DataError(f"task input {path} has no datastructure metadata; prepare it with prepare_task_input")
    loaded: dict[str, object] = json.loads(raw)
    return loaded


def _media(schema: Schema, selection: DataSelection, section: DatasourceSection | None) -> _Media | None:
    """The selection's image or text column and its encoding (None: a tabular selection).

    ``section`` is the pod's datasource config (its defaults and bounds); None when a modeller plans,
    when the selection must name what the pod would otherwise choose.
    """
    known = {c.name: c for c in schema.columns}
    chosen = [n for n in selection.columns or [] if n not in selection.ignore and n in known]
    named = [n for n in chosen if known[n].stype in _MEDIA_STYPES]
    if not named:
        return None
    if len(chosen) != 1:
        raise DataError(
            f"task input: {named[0]!r} is a {known[named[0]].stype} column; it must be the selection's only "
            f"column, not one of {chosen}"
        )
    name = named[0]
    if known[name].stype == "image":
        return _Media(name, image=_image_format(selection, None if section is None else images_section(section)))
    limit = None if section is None else section.text.max_tokens
    max_tokens = selection.max_tokens or limit
    if max_tokens is None:
        raise DataError(f"task input: planning text column {name!r} needs the selection's max_tokens")
    if limit is not None and max_tokens > limit:
        raise DataError(
            f"task input: max_tokens {max_tokens} is over this pod's datasource.text.max_tokens {limit}; ask for less"
        )
    vocabulary = None if selection.vocabulary is None else tuple(selection.vocabulary)
    return _Media(name, tokens=TextTokens(max_tokens=max_tokens, vocabulary=vocabulary))


def _image_format(selection: DataSelection, images: ImagesSection | None) -> ImageFormat:
    size = selection.image_size or (None if images is None else images.size)
    mode = selection.image_mode or (None if images is None else images.mode)
    if size is None or mode is None:
        raise DataError("task input: planning an image column needs the selection's image_size and image_mode")
    height, width = size
    if images is not None and (height > images.max_size[0] or width > images.max_size[1]):
        raise DataError(
            f"task input: image_size {list(size)} is over this pod's datasource.images.max_size "
            f"{list(images.max_size)}; ask for a smaller size"
        )
    if min(height, width) < 1:
        raise DataError(f"task input: image_size {list(size)} must be positive")
    return ImageFormat(mode=mode, height=height, width=width)


def _x_fields(plans: list[_ColumnPlan], media: _Media | None, input_size: int) -> tuple[pa.Field, list[pa.Field]]:
    """The ``x`` field and the fields after ``split``: tabular rows in the compact layout (``tabular_layout.py``),
    images and text as ``x`` alone."""
    if media is None:
        layout = _layout(plans)
        n_continuous = len(layout.continuous)
        n_categorical = len(plans) - n_continuous
        x_field = pa.field("x", pa.list_(pa.float32(), max(n_continuous, 1)), metadata=layout.metadata())
        return x_field, [pa.field(SLOTS_COLUMN, pa.list_(pa.int32(), max(n_categorical, 1)))]
    x_type = pa.int32() if media.tokens is not None else pa.uint8()
    metadata = {ROW_SHAPE_METADATA_KEY: json.dumps(list(media.row_shape)).encode()}
    return pa.field("x", pa.list_(x_type, input_size), metadata=metadata), []


def _layout(plans: list[_ColumnPlan]) -> TabularLayout:
    """Each continuous column's position in the dense vector (the sum of the widths before it)."""
    offsets = np.cumsum([0] + [p.width for p in plans])
    positions = tuple(int(offsets[i]) for i, p in enumerate(plans) if p.stype == "continuous")
    return TabularLayout(int(offsets[-1]), positions)


def _media_encoder(media: _Media, section: DatasourceSection) -> Callable[[pa.RecordBatch], np.ndarray]:
    """Encodes a record batch's media column into ``[rows, width]`` (uint8 pixels or int32 token ids)."""
    if media.tokens is not None:
        tokens = media.tokens
        return lambda batch: tokens.encode(pc.cast(batch.column(media.column), pa.string()).to_pylist())
    reader = ImageReader(images_section(section), media.image)  # type: ignore[arg-type]

    def images(batch: pa.RecordBatch) -> np.ndarray:
        paths = batch.column(media.column).to_pylist()
        x = np.empty((len(paths), media.width), dtype=np.uint8)
        for row, path in enumerate(paths):
            if path is None:
                raise DataError(f"task input: image column {media.column!r} has a missing path; fill or drop the row")
            x[row] = reader.pixels(str(path)).reshape(-1)
        return x

    return images


def _plan(
    schema: Schema, selection: DataSelection, encoding: CategoricalEncoding, media: _Media | None
) -> tuple[list[_ColumnPlan], _ColumnPlan]:
    known = {c.name: c for c in schema.columns}
    if selection.target not in known:
        raise DataError(
            f"task input: target column {selection.target!r} is not in the datasource; "
            f"choose one of {sorted(known)}"
        )
    target_col = known[selection.target]
    if target_col.stype not in _FEATURE_STYPES:
        raise DataError(
            f"task input: target column {selection.target!r} has stype {target_col.stype!r}; "
            "a target must be categorical or continuous (force_stypes can set it)"
        )
    target = _ColumnPlan(target_col.name, target_col.stype, list(target_col.categories or []), 0)
    if media is not None:
        if media.column == selection.target:
            raise DataError(f"task input: column {media.column!r} is the target; choose another column")
        return [_ColumnPlan(media.column, known[media.column].stype, [], media.width)], target
    if selection.columns is None:
        names = [c.name for c in schema.columns if c.name != selection.target and c.name not in selection.ignore]
        names = [n for n in names if known[n].stype in _FEATURE_STYPES]
    else:
        names = [n for n in selection.columns if n not in selection.ignore]
    plans: list[_ColumnPlan] = []
    for name in names:
        if name not in known:
            raise DataError(f"task input: column {name!r} is not in the datasource; choose from {sorted(known)}")
        if name == selection.target:
            raise DataError(f"task input: column {name!r} is the target; remove it from the feature columns")
        col = known[name]
        if col.stype not in _FEATURE_STYPES:
            raise DataError(
                f"task input: column {name!r} has stype {col.stype!r}; only categorical and continuous "
                "columns can be tabular features - drop it from the selection, or select it alone"
            )
        categories = list(col.categories or [])
        if col.stype == "continuous":
            width = 1
        elif encoding == "hashed":
            width = HASHED_BUCKETS
        else:
            width = len(categories) + 1
        plans.append(_ColumnPlan(name, col.stype, categories, width, hashed=encoding == "hashed"))
    if not plans:
        raise DataError("task input: the selection leaves no feature column; list columns or ignore fewer")
    return plans, target


def _datastructure(
    plans: list[_ColumnPlan],
    target: _ColumnPlan,
    *,
    task: str,
    encoding: CategoricalEncoding,
    n_rows: dict[str, int],
    n_dropped: int,
    selection: DataSelection,
    share_categories: bool,
    media: _Media | None = None,
) -> dict[str, object]:
    other = _OTHER_SHARED if share_categories else _OTHER_BY_INDEX
    feature_names: list[str] = []
    for plan in [] if media is not None else plans:
        if plan.stype == "continuous":
            feature_names.append(plan.name)
        elif plan.hashed:
            feature_names += [f"{plan.name}#{i}" for i in range(HASHED_BUCKETS)]
        else:
            labels = _category_labels(plan.categories, share_categories=share_categories)
            feature_names += [f"{plan.name}={label}" for label in [*labels, other]]
    return {
        "version": 1,
        "target": target.name,
        "task": task,
        "input_size": len(feature_names) if media is None else media.width,
        "n_classes": len(target.categories) if task == "classification" else 1,
        "target_categories": _category_labels(target.categories, share_categories=share_categories),
        "feature_names": feature_names,
        "columns": [p.name for p in plans],
        "stypes": {p.name: p.stype for p in plans} | {target.name: target.stype},
        "categorical_encoding": encoding,
        "support_columns": [],
        "n_rows": n_rows,
        "n_dropped": n_dropped,
        "split": selection.split.model_dump(),
    } | ({} if media is None else media.describe())


def _category_labels(categories: list[str], *, share_categories: bool) -> list[str]:
    """The categories' values where the owner shares them, else their slot index (``#0`` ...)."""
    return list(categories) if share_categories else [f"#{i}" for i in range(len(categories))]


def _batches(ds: Datasource, columns: list[str], *, rows: int) -> Iterator[pa.RecordBatch]:
    for batch in ds.batches(columns=columns, batch_rows=rows):
        if batch.num_rows:
            yield batch


def _strata(y: np.ndarray, task: str) -> np.ndarray:
    # Regression has no classes to stratify by: one stratum.
    return y.astype(np.int64) if task == "classification" else np.zeros(len(y), dtype=np.int64)


def _encode_target(batch: EncodedBatch, target: _ColumnPlan) -> tuple[np.ndarray, np.ndarray]:
    if target.stype == "categorical":
        y = batch.category(target.name)
        return y, y >= 0
    values = batch.floats(target.name)
    return values, ~np.isnan(values)


def _encode_features(
    batch: EncodedBatch, plans: list[_ColumnPlan], keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows where ``keep`` is set: continuous values ``[rows, n_continuous]`` (float32) and dense slot positions
    ``[rows, n_categorical]`` (int32, -1 for none), in the order of ``plans``: the compact layout's columns."""
    n_rows = int(keep.sum())
    n_continuous = sum(p.stype == "continuous" for p in plans)
    values = np.empty((n_rows, n_continuous), dtype=np.float32)
    slots = np.empty((n_rows, len(plans) - n_continuous), dtype=np.int32)
    offset = n_value = n_slot = 0
    for plan in plans:
        if plan.stype == "continuous":
            values[:, n_value] = np.nan_to_num((batch.floats(plan.name)[keep] - plan.mean) / plan.std, nan=0.0)
            n_value += 1
        elif plan.hashed:
            slot = batch.bucket(plan.name)[keep]
            slots[:, n_slot] = np.where(slot >= 0, offset + slot, -1)
            n_slot += 1
        else:
            # A value the schema does not list, or a missing one, takes the reserved last slot.
            index = batch.category(plan.name)[keep]
            slots[:, n_slot] = offset + np.where(index >= 0, index, plan.width - 1)
            n_slot += 1
        offset += plan.width
    return values, slots
