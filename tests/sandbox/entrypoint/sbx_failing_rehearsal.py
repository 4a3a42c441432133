"""Test entry: sbx_test_entry's worker whose rehearsal fails (a fork-server child must then not be parked)."""

from __future__ import annotations

from typing import Any

from sbx_test_entry import prepare, serve

__all__ = ["prepare", "rehearse", "serve"]


def rehearse(work_dir: Any) -> None:
    raise RuntimeError("the rehearsal failed")
