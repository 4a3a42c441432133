"""The notebooks in examples/, executed once per session against the tutorials' federation.

The tests of this folder assert on each outcome and on what the hub's status page then shows of
the runs. The run times are appended to ``notebook-times.txt`` among the artefacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from notebook_support import EXAMPLES, NOTEBOOKS, NotebookRun, run_notebook
from tutorial_support import artifacts_dir


@pytest.fixture(scope="session")
def notebook_runs(tutorial_federation: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, NotebookRun]:
    runs = {
        name: run_notebook(EXAMPLES / name, federation_file=tutorial_federation.file,
                           cwd=tmp_path_factory.mktemp(Path(name).stem))
        for name in NOTEBOOKS
    }
    with (artifacts_dir(tmp_path_factory.mktemp("artifacts")) / "notebook-times.txt").open("a") as out:
        out.writelines(f"{name}: {run.seconds:.1f} s\n" for name, run in runs.items())
    return runs
