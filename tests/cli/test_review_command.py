"""`pod-agent review list|show|approve|reject` over a real state database holding real signed tasks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from task_support import entries

from pod_agent.modeller import build_task
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope, source_sha256
from pod_agent.protocol.messages import DataSelection, ModelRef
from pod_agent.state import PodState, ReviewHold, TaskStatus, Verdict

V1 = "import torch\n\nclass M(torch.nn.Module):\n    width = 8\n"
V2 = "import torch\n\nclass M(torch.nn.Module):\n    width = 16\n"
NOW = 1_800_000_000


@pytest.fixture
def pod(tmp_path: Path) -> tuple[Path, Path, IdentityKey]:
    alice = IdentityKey.generate()
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    config = tmp_path / "pod.toml"
    config.write_text(
        f'[pod]\nname = "clinic"\nstate_dir = "{tmp_path / "state"}"\n[datasource]\npath = "{tmp_path / "data.csv"}"\n'
        f'[security]\nreview = true\n'
        f'[[security.modellers]]\nname = "alice"\npublic_key = "{alice.public.to_b64()}"\nrole = "super"\n'
    )
    return config, tmp_path / "state" / "state.sqlite", alice


def _held(path: Path, key: IdentityKey, source: str) -> str:
    model = ModelRef(style="module", name="tiny", class_name="M", source=source, sha256=source_sha256(source))
    task = build_task(modeller_id=key.key_id, cohort=entries(["clinic"], "a" * 64), kind="train",
                      model=model, data=DataSelection(target="b"), now=NOW, lifetime_s=10**9)
    with PodState.open(path) as state:
        state.record_verdict(Verdict(
            task_id=task.task_id, nonce=task.nonce, modeller_id=key.key_id, kind="train",
            envelope_json=envelope_bytes(sign_envelope(task, key)).decode(), accepted=True, reason=None,
            keep_until=task.expires_at, now=NOW,
            review=ReviewHold(model_name="tiny", model_sha256=model.sha256, model_text=source),
        ))
    return task.task_id


def _status(path: Path, task_id: str) -> TaskStatus:
    with PodState.open(path) as state:
        record = state.get_task(task_id)
    assert record is not None
    return record.status


def test_review_shows_the_diff_against_the_last_approved_version_and_records_who_decided(
    cli: Callable[..., Any], pod: tuple[Path, Path, IdentityKey]
) -> None:
    config, path, alice = pod
    first = _held(path, alice, V1)
    listed = cli("review", "list", "--config", str(config))
    assert listed.code == 0, listed.err
    assert first in listed.out and "modeller=alice" in listed.out and "pending" in listed.out

    shown = cli("review", "show", first, "--config", str(config))
    assert "no version of 'tiny' was approved before" in shown.out and "+    width = 8" in shown.out

    approved = cli("review", "approve", first, "--config", str(config), "--by", "carol")
    assert approved.code == 0, approved.err
    assert f"approved by carol; queued 1 task(s): {first}" in approved.out
    assert _status(path, first) is TaskStatus.ACCEPTED

    second = _held(path, alice, V2)
    diff = cli("review", "show", second, "--config", str(config)).out
    assert "-    width = 8" in diff and "+    width = 16" in diff and "(approved by carol)" in diff

    rejected = cli("review", "reject", second, "--config", str(config), "--by", "dave")
    assert rejected.code == 0 and "rejected by dave" in rejected.out
    assert _status(path, second) is TaskStatus.REFUSED
    history = cli("review", "list", "--all", "--config", str(config)).out
    assert "approved  by carol" in history and "rejected  by dave" in history


def test_a_decision_needs_a_name_and_a_pending_task(
    cli: Callable[..., Any], pod: tuple[Path, Path, IdentityKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, path, alice = pod
    task_id = _held(path, alice, V1)
    monkeypatch.delenv("USER", raising=False)
    anonymous = cli("review", "approve", task_id, "--config", str(config))
    assert anonymous.code != 0 and "pass --by NAME" in anonymous.err
    monkeypatch.setenv("USER", "erin")
    assert "approved by erin" in cli("review", "approve", task_id, "--config", str(config)).out
    again = cli("review", "reject", task_id, "--config", str(config))
    assert again.code != 0 and f"task {task_id} was already approved by erin" in again.err
