"""The audit export: what each task released, and a hash chain the pod signs that shows any change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from task_support import entries

from pod_agent.modeller import build_task
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope, source_sha256
from pod_agent.protocol.messages import DataSelection, ModelRef, ResultPayload
from pod_agent.state import ExportBroken, PodState, Verdict, export_lines, verify_export

SOURCE = "class M:\n    pass\n"
POD_KEY = IdentityKey.generate()
ALICE = IdentityKey.generate()


def _task(state: PodState, *, now: int, refused: str | None = None) -> str:
    model = ModelRef(style="module", name="tiny", class_name="M", source=SOURCE, sha256=source_sha256(SOURCE))
    task = build_task(modeller_id=ALICE.key_id, cohort=entries(["clinic"], "a" * 64), kind="evaluate",
                      model=model, data=DataSelection(target="b"), now=now)
    state.record_verdict(Verdict(
        task_id=task.task_id, nonce=task.nonce, modeller_id=ALICE.key_id, kind="evaluate",
        envelope_json=envelope_bytes(sign_envelope(task, ALICE)).decode(), accepted=refused is None, reason=refused,
        keep_until=now + 3600, now=now,
    ))
    return task.task_id


@pytest.fixture
def lines(tmp_path: Path) -> list[str]:
    with PodState.open(tmp_path / "state.sqlite") as state:
        _task(state, now=50, refused="expired")  # before --since: left out
        done = _task(state, now=100)
        state.claim_next(now=101)
        result = ResultPayload(task_id=done, pod="clinic", kind="evaluate", status="done", n_rows=123,
                               metrics={"test_accuracy": 0.5}, produced_at=102)
        envelope = envelope_bytes(sign_envelope(result, POD_KEY)).decode()
        state.finish(done, status="done", result_json=envelope, now=102)
        state.mark_delivered(done, now=103)
        _task(state, now=110, refused="schema_mismatch")
        rows = state.audit_rows(since=100)
    return list(export_lines(rows, names={ALICE.key_id: "alice"}, pod="clinic", key=POD_KEY, since=100))


def test_each_task_line_says_who_what_how_it_ended_and_what_it_released(lines: list[str]) -> None:
    tasks = [json.loads(line) for line in lines[1:-1]]
    assert [(t["outcome"], t["reason"]) for t in tasks] == [("done", None), ("refused", "schema_mismatch")]
    done = tasks[0]
    assert (done["modeller"], done["signer"], done["kind"]) == ("alice", ALICE.key_id, "evaluate")
    assert done["model"] == {"name": "tiny", "sha256": source_sha256(SOURCE)}
    assert done["rows"] == 123 and done["bytes"] > 0 and done["dp"] == []
    assert tasks[1]["rows"] == 0 and tasks[1]["bytes"] == 0
    summary = verify_export(lines, pinned=POD_KEY.public)
    assert (summary.tasks, summary.pod) == (2, "clinic")


def test_a_changed_line_is_detected_at_the_line_after_it(lines: list[str]) -> None:
    record = json.loads(lines[1])
    record["rows"] = 1  # what an editor would hide; re-encoded canonically, so only the chain can tell
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    with pytest.raises(ExportBroken, match="line 3: does not chain to line 2"):
        verify_export(lines)


def test_a_removed_line_a_cut_export_and_another_key_are_detected(lines: list[str]) -> None:
    with pytest.raises(ExportBroken, match="line 2: does not chain to line 1"):
        verify_export([lines[0], *lines[2:]])
    with pytest.raises(ExportBroken, match="line 4: the signed end line is missing"):
        verify_export(lines[:-1])
    with pytest.raises(ExportBroken, match="signature over the chain does not verify"):
        verify_export(lines, pinned=IdentityKey.generate().public)
