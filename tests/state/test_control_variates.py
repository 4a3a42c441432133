"""The pod's SCAFFOLD control variates in its state: per modeller and run, bounded per modeller."""

from __future__ import annotations

from pathlib import Path

from pod_agent.state import PodState
from pod_agent.state.db import MAX_CONTROL_RUNS_PER_MODELLER


def test_a_modeller_keeps_at_most_a_few_runs_of_control_variates(tmp_path: Path) -> None:
    with PodState.open(tmp_path / "state.sqlite") as state:
        runs = [f"{i:08x}-1234-1234-1234-123456789abc" for i in range(MAX_CONTROL_RUNS_PER_MODELLER + 2)]
        for now, run in enumerate(runs):
            state.keep_control_variate(modeller_id="m1", run_id=run, tensors=b"x", now=now)
        state.keep_control_variate(modeller_id="m2", run_id=runs[0], tensors=b"y", now=0)
        kept = [r for r in runs if state.control_variate(modeller_id="m1", run_id=r) is not None]
        assert kept == runs[2:]
        assert state.control_variate(modeller_id="m2", run_id=runs[0]) == b"y"
