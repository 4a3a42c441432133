"""The notebooks in examples/ run top to bottom in a python3 kernel against real local pods."""

from __future__ import annotations

import pytest
from notebook_support import EXAMPLES, NOTEBOOKS, NotebookRun

pytestmark = pytest.mark.slow


def test_every_notebook_in_examples_is_run() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom_and_trains_on_the_pods(notebook_runs: dict[str, NotebookRun], name: str) -> None:
    run = notebook_runs[name]
    assert run.error is None, run.error
    # The round table's header and its second round: the run trained on the pods and was evaluated.
    assert "overall loss/acc" in run.printed, run.printed[-2000:]
    assert "\n    2 " in run.printed, run.printed[-2000:]
