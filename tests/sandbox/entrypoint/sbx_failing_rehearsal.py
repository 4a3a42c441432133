"""Test entry: sbx_test_entry's worker whose rehearsal fails (a fork-server child must then not be parked)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sbx_test_entry
from sbx_test_entry import serve

__all__ = ["prepare", "serve"]


def prepare() -> Callable[[Any], None]:
    sbx_test_entry.prepare()
    return _rehearse


def _rehearse(work_dir: Any) -> None:
    raise RuntimeError("the rehearsal failed")
