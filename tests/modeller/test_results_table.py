"""`modeller results`' table: metrics as columns while they fit, one line each past that."""

from __future__ import annotations

from pathlib import Path

from pod_agent.modeller.results import MAX_METRIC_COLUMNS, PodAnswer, results_table


def test_many_metrics_follow_the_table_one_line_each() -> None:
    stats = {f"mean.c{i}": float(i) for i in range(MAX_METRIC_COLUMNS + 1)}
    answers = [
        PodAnswer(pod="pod-a", status="done", reason=None, metrics=stats, key="pinned", blob=None),
        PodAnswer(pod="pod-b", status="refused", reason="too_few_pods", metrics={}, key="unsigned", blob=None),
    ]
    lines = results_table(answers).splitlines()
    assert [line.split() for line in lines[:3]] == [
        ["pod", "status", "code", "key", "file"],
        ["pod-a", "done", "-", "pinned", "-"],
        ["pod-b", "refused", "too_few_pods", "unsigned", "-"],
    ]
    assert [line.split() for line in lines[3:]] == [
        ["pod-a", name, f"{value:.4g}"] for name, value in sorted(stats.items())
    ]


def test_few_metrics_are_columns_and_the_file_says_what_it_holds() -> None:
    answer = PodAnswer(pod="pod-a", status="done", reason=None, metrics={"test_loss": 0.41234567}, key="unpinned",
                       blob=Path("out/pod-a.update.safetensors"))
    assert [line.split() for line in results_table([answer]).splitlines()] == [
        ["pod", "status", "code", "key", "test_loss", "file"],
        ["pod-a", "done", "-", "unpinned", "0.4123", "pod-a.update.safetensors"],
    ]
