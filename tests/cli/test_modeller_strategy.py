"""`pod-agent modeller train --strategy`: a strategy that cannot run as planned is refused in one line, before
the hub is contacted (the hub URL here has nobody listening)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_TRAIN = ("train", "--model", "model.py", "--class", "Net", "--style", "module", "--pods", "a,b,c", "--target", "y")


@pytest.fixture
def train(cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text("class Net:\n    pass\n")

    def run(*extra: str) -> Any:
        return cli("modeller", "--hub", "http://127.0.0.1:9", "--key", str(tmp_path / "none.pem"), *_TRAIN, *extra)

    return run


@pytest.mark.parametrize("strategy", ["median", "trimmed-mean"])
def test_robust_aggregation_with_secure_aggregation_is_refused_with_the_reason(
    train: Callable[..., Any], strategy: str
) -> None:
    result = train("--strategy", strategy)
    assert result.code != 0 and result.err.count("\n") == 1
    assert "only ever sees the masked sum of the cohort's updates" in result.err
    assert "--plain" in result.err


def test_an_unknown_strategy_is_refused_naming_the_known_ones(train: Callable[..., Any]) -> None:
    result = train("--strategy", "fedsgd")
    assert result.code != 0
    assert "unknown strategy 'fedsgd'; choose one of fedavg, fedavgm, fedadam, fedyogi, fedadagrad" in result.err
