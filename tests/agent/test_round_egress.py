"""The audit export counts what a secure round sends: the masked vector and the signed round messages, also for a
pod whose round never produced a result, and the masked vector only once when the result references it."""

from __future__ import annotations

import json
from pathlib import Path

from round_support import RoundRig, round_rig, settle
from task_support import cohort_of

from pod_agent.agent.secure_round import RoundOutput
from pod_agent.modeller.secure_round import run_secure_round
from pod_agent.protocol import IdentityKey, TaskPayload, envelope_bytes, sign_envelope
from pod_agent.protocol.messages import ResultPayload
from pod_agent.state import AuditRow, PodState, Verdict, export_lines


def _admit(state: PodState, rig: RoundRig, task: TaskPayload) -> None:
    """Store the task as the pod's verifier would before its round starts."""
    state.record_verdict(Verdict(
        task_id=task.task_id, nonce=task.nonce, modeller_id=rig.modeller_key.key_id, kind=task.kind,
        envelope_json=envelope_bytes(sign_envelope(task, rig.modeller_key)).decode(), accepted=True, reason=None,
        keep_until=task.expires_at + 60, now=task.issued_at,
    ))
    state.claim_next(now=task.issued_at)


def _line(state: PodState, key: IdentityKey) -> dict[str, object]:
    rows: list[AuditRow] = state.audit_rows(since=0)
    lines = list(export_lines(rows, names={}, pod="pod", key=key, since=0))
    assert len(lines) == 3
    task: dict[str, object] = json.loads(lines[1])
    return task


async def test_a_round_s_masked_vector_and_messages_are_in_the_export_with_or_without_a_result(
    tmp_path: Path,
) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task = rig.task()
        for pod in rig.pods.values():
            _admit(pod.state, rig, task)
        await rig.modeller.submit_task(task, cohort_of(task))
        pods = await rig.run_pods(task, cut={"pod-0": "masked"})
        await run_secure_round(rig.modeller, task, cohort_of(task), vector_size=rig.layout(task).size,
                               work_dir=rig.tmp)
        outcomes = await settle(pods, cut=["pod-0"])

        # pod-0's link died after it sent its masked vector: no result, but the vector and messages left.
        cut = rig.pods["pod-0"]
        line = _line(cut.state, cut.key)
        by = line["bytes_by"]
        assert isinstance(by, dict)
        masked_bytes = rig.layout(task).size * 8  # one u64 per value
        assert by["masked"] == masked_bytes
        assert by["round"] > 0 and "update" not in by
        assert line["bytes"] == sum(by.values())

        # pod-1 finished: its result references the masked vector, counted once (as masked, not as an update).
        done = rig.pods["pod-1"]
        output = outcomes["pod-1"]
        assert isinstance(output, RoundOutput)
        result = ResultPayload(task_id=task.task_id, pod="pod-1", kind="train", status="done", blob=output.blob,
                               produced_at=task.issued_at + 1)
        envelope = envelope_bytes(sign_envelope(result, done.key)).decode()
        done.state.finish(task.task_id, status="done", result_json=envelope, blob_path=output.blob_path,
                          now=task.issued_at + 1)
        line = _line(done.state, done.key)
        by = line["bytes_by"]
        assert isinstance(by, dict)
        assert by["masked"] == masked_bytes and by["result"] == len(envelope) and "update" not in by
        assert line["bytes"] == masked_bytes + by["round"] + len(envelope)
