"""Mini-batches of a compact tabular input: the dense rows of their split, and a tampered file refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from training_support import TUTORIAL_MODEL, InProcessChannel, make_task, request_for, source_ref, stage_input

from pod_agent.data import SPLIT_CODES, dense_x
from pod_agent.data.tabular_layout import LAYOUT_METADATA_KEY
from pod_agent.data.task_input import TaskInput
from pod_agent.errors import TrainingError
from pod_agent.training import worker
from pod_agent.training.dataset import SplitBatches


def _table(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def _write(table: pa.Table, path: Path) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


@pytest.mark.parametrize("split", list(SPLIT_CODES))
def test_batches_are_the_dense_rows_of_their_split(adult_input: TaskInput, split: str) -> None:
    table = _table(adult_input.path)
    chosen = table.column("split").to_numpy() == SPLIT_CODES[split]
    batches = SplitBatches(adult_input.path, split=split, batch_size=100, shuffle=False, seed=0)
    xs, ys = zip(*(((x, y) for (x, _support), y in batches)), strict=True)
    assert batches.n_rows == chosen.sum() > 0
    assert torch.equal(torch.cat(xs), torch.from_numpy(dense_x(table)[chosen]))
    assert torch.equal(torch.cat(ys), torch.from_numpy(table.column("y").to_numpy()[chosen]))


def _with_layout(change: Callable[[dict[str, object]], object]) -> Callable[[pa.Table], pa.Table]:
    def tamper(table: pa.Table) -> pa.Table:
        field = table.schema.field("x")
        layout = json.loads(field.metadata[LAYOUT_METADATA_KEY])
        raw = change(layout)
        metadata = raw if isinstance(raw, bytes) else json.dumps(layout).encode()
        return table.set_column(0, field.with_metadata({LAYOUT_METADATA_KEY: metadata}), table.column("x"))

    return tamper


def _with_slot(value: int) -> Callable[[pa.Table], pa.Table]:
    def tamper(table: pa.Table) -> pa.Table:
        slots = table.column("slots").combine_chunks()
        flat = np.array(slots.flatten().to_numpy())
        flat[7] = value
        column = pa.FixedSizeListArray.from_arrays(pa.array(flat), slots.type.list_size)
        return table.set_column(3, table.schema.field("slots"), column)

    return tamper


TAMPERED = {
    "slot past the vector": (_with_slot(10**6), r"sets slot 1000000, outside \[0, \d+\)"),
    "slot below -1": (_with_slot(-2), r"sets slot -2, outside"),
    "metadata not JSON": (_with_layout(lambda layout: b"{"), "layout .* is unreadable"),
    "input_size missing": (_with_layout(lambda layout: layout.pop("input_size")), "unreadable"),
    "input_size not positive": (_with_layout(lambda layout: layout.update(input_size=0)), "positive input_size"),
    "input_size a boolean": (_with_layout(lambda layout: layout.update(input_size=True)), "positive input_size"),
    "continuous value outside": (
        _with_layout(lambda layout: layout["continuous"].append(10**6)),  # type: ignore[attr-defined]
        r"continuous values at \[1000000\], outside",
    ),
    "x wider than the layout": (
        _with_layout(lambda layout: layout["continuous"].pop()),  # type: ignore[attr-defined]
        r"its layout needs fixed_size_list<float32>",
    ),
    "slots column gone": (lambda table: table.drop_columns(["slots"]), "slots is None"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_compact_file_is_refused_as_data_invalid(adult_input: TaskInput, tmp_path: Path, case: str) -> None:
    tamper, message = TAMPERED[case]
    path = _write(tamper(_table(adult_input.path)), tmp_path / "data.arrow")
    with pytest.raises(TrainingError, match=message) as raised:
        list(SplitBatches(path, split="train", batch_size=64, shuffle=True, seed=0))
    assert raised.value.code == "data_invalid"


def test_a_task_on_a_tampered_cached_input_fails_with_data_invalid(adult_input: TaskInput, tmp_path: Path) -> None:
    """At a weak sandbox level an earlier worker could have rewritten a cached input the next task links."""
    tampered = _write(_with_slot(-7)(_table(adult_input.path)), tmp_path / "tampered.arrow")
    task = make_task("train", source_ref(TUTORIAL_MODEL, "MyCustomModel"), steps=2)
    input_dir = stage_input(task, data_file=tampered, into=tmp_path / "task")
    request = request_for(task, adult_input.datastructure)
    channel = InProcessChannel(input_dir=input_dir, work_dir=tmp_path / "task" / "work", sent_request=request)
    worker.serve(channel)
    assert channel.failure == "data_invalid" and channel.header is None
