"""Running a notebook of examples/ in a python3 kernel (nbclient) against a running federation.

The notebook joins the federation through its federation file, as a modeller joins one; the
outcome (its printed output, seconds, or the error it stopped at) is returned, not raised, so
that one failing notebook does not hide how the others went.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupytext
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from pod_agent.demo.tutorial import FEDERATION_ENV

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = ("custom_model_tutorial.py", "module_model.py", "declarative_spec.py")
# Per cell; a notebook takes 15-40 s on 2 cores with the federation running.
CELL_TIMEOUT_S = 180


@dataclass(frozen=True)
class NotebookRun:
    seconds: float
    printed: str  # everything the code cells wrote to stdout
    error: str | None  # the failing cell's error, None when every cell ran


def _printed(nb: Any) -> str:
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )


def run_notebook(path: Path, *, federation_file: Path, cwd: Path) -> NotebookRun:
    nb = jupytext.read(path)
    previous = os.environ.get(FEDERATION_ENV)
    os.environ[FEDERATION_ENV] = str(federation_file)  # the kernel inherits it
    started = time.monotonic()
    error = None
    try:
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
                       ).execute()
    except CellExecutionError as exc:
        error = str(exc)
    finally:
        if previous is None:
            os.environ.pop(FEDERATION_ENV, None)
        else:
            os.environ[FEDERATION_ENV] = previous
    return NotebookRun(time.monotonic() - started, _printed(nb), error)
