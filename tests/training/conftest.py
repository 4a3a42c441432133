"""Fixtures of the training tests: a small Adult table prepared once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from training_support import InProcessChannel, RunTask, request_for, stage_input

from pod_agent.config.settings import DatasourceSection
from pod_agent.data import open_datasource
from pod_agent.data.task_input import TaskInput, prepare_task_input
from pod_agent.protocol.messages import DataSelection, TaskPayload
from pod_agent.training import worker

# Small enough for ~1 s per training task on 2 cores, big enough for stable validation loss.
SMALL_ADULT_ROWS = 4000


@pytest.fixture(scope="session")
def small_adult(adult_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first rows of the shared Adult table (tests/conftest.py) as a Parquet file of their own."""
    path = tmp_path_factory.mktemp("adult_small") / "adult_small.parquet"
    pq.write_table(pq.read_table(adult_parquet).slice(0, SMALL_ADULT_ROWS), path)
    return path


@pytest.fixture(scope="session")
def adult_input(small_adult: Path, tmp_path_factory: pytest.TempPathFactory) -> TaskInput:
    ds = open_datasource(DatasourceSection(path=small_adult))
    return prepare_task_input(
        ds, ds.schema(), DataSelection(target="TARGET"), tmp_path_factory.mktemp("prepared"), share_categories=False
    )



@pytest.fixture
def run_in_process(adult_input: TaskInput, tmp_path: Path) -> RunTask:
    """Run the worker's ``serve`` on a task in this process; returns the channel it answered on."""
    counter = iter(range(1000))

    def run(
        task: TaskPayload, *, weights: bytes | None = None, min_rows: int = 20, overrides: dict[str, Any] | None = None
    ) -> InProcessChannel:
        into = tmp_path / f"task{next(counter)}"
        input_dir = stage_input(task, data_file=adult_input.path, into=into, weights=weights)
        request = request_for(task, adult_input.datastructure, min_rows=min_rows) | (overrides or {})
        channel = InProcessChannel(input_dir=input_dir, work_dir=into / "work", sent_request=request)
        worker.serve(channel)
        return channel

    return run

