"""The benchmark runner (bench/__main__.py): missing modules are reported, results become a markdown table."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # bench/ is a top-level directory of the repository, not part of the installed package.
    monkeypatch.syspath_prepend(str(_REPO))
    return importlib.import_module("bench.__main__")


def test_a_missing_benchmark_is_reported_as_missing_not_skipped(runner: ModuleType) -> None:
    outcome = runner._run_one("no_such_bench", small=True, timeout_s=60)
    assert outcome.status == "missing"
    assert outcome.error == "bench/no_such_bench.py does not exist"


def test_machine_description_names_cpu_cores_and_ram(runner: ModuleType) -> None:
    info = runner.machine()
    assert info["cpu"] and info["cores"] >= 1 and info["ram_gib"] > 0


def test_markdown_has_a_summary_row_per_benchmark_and_a_metric_table_per_result(runner: ModuleType) -> None:
    report = {
        "mode": "smoke",
        "finished_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "Test CPU", "cores": 2, "ram_gib": 4.0, "os": "Linux", "python": "3.11", "torch": "2.13.0"},
        "benchmarks": [
            {"name": "wire", "status": "ok", "seconds": 1.25, "error": None,
             "result": {"speedup": 402.4, "json": {"bytes": 10}, "ok": True}},
            {"name": "secagg", "status": "missing", "seconds": 0.1, "error": "bench/secagg.py does not exist",
             "result": None},
        ],
    }
    text = runner.markdown(report)
    assert "Test CPU, 2 cores, 4.0 GiB RAM" in text
    assert "| wire | ok | 1.2 | yes |" in text
    assert "| secagg | missing: bench/secagg.py does not exist | 0.1 |  |" in text
    assert "| json.bytes | 10 |" in text and "| speedup | 402.4 |" in text


def test_only_known_benchmarks_may_be_selected(runner: ModuleType) -> None:
    with pytest.raises(SystemExit):
        runner.main(["--only", "nonsense"])
