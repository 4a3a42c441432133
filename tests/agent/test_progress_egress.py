"""The daemon counts each progress event it sends for a task in the audit export's bytes, beside the result."""

from __future__ import annotations

from pathlib import Path

from agent_support import hub_with_agent
from task_support import cohort_of, entries

from pod_agent.modeller import VerifiedResult, build_task
from pod_agent.state import PodState

CSV = "age,TARGET\n" + "".join(f"{20 + i % 40},{i % 2}\n" for i in range(60))


async def test_progress_events_sent_for_a_task_are_counted_with_its_result(tmp_path: Path) -> None:
    async with hub_with_agent(tmp_path, CSV, stop_within_s=10) as rig:
        task = build_task(
            modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="schema-stats"
        )
        await rig.modeller.submit_task(task, cohort_of(task))
        answer = (await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20))["pod-a"]
        assert isinstance(answer, VerifiedResult)
        # What the hub holds of the task's progress came from the pod, so it was counted before it left.
        progress = (await rig.modeller.status(task.task_id)).pods["pod-a"]["progress"]
        assert progress is not None
    with PodState.open(tmp_path / "pod" / "state.sqlite") as state:
        (row,) = state.audit_rows(since=0)
    assert row.bytes_by_channel["progress"] > 0 and row.bytes_by_channel["result"] > 0
    assert row.bytes_released == sum(row.bytes_by_channel.values())
