"""The command line every benchmark module shares when run on its own (``python -m bench.NAME``).

``--small`` picks the smoke size, ``--json`` prints the result dict instead of the module's table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def parser_for(doc: str | None, *, small_help: str | None) -> argparse.ArgumentParser:
    """A parser described by the module docstring's first line; ``small_help=None`` leaves out ``--small``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    if small_help is not None:
        parser.add_argument("--small", action="store_true", help=small_help)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def show(result: dict[str, Any], *, as_json: bool, table: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table(result)
