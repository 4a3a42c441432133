"""Renamed modeller options fail naming their new spelling, so an old script learns the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def test_allow_insecure_http_is_refused_naming_unsafe_allow_http(cli: Callable[..., Any], tmp_path: Path) -> None:
    result = cli("modeller", "--hub", "http://192.0.2.1:8700", "--key", str(tmp_path / "m.pem"),
                 "--allow-insecure-http", "pods")
    assert result.code == 2
    assert "--allow-insecure-http was renamed --unsafe-allow-http" in result.err
