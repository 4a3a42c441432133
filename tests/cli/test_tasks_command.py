"""`pod-agent tasks list|show`: the pod's record of what ran, read from a real state database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from task_support import entries

from pod_agent.modeller import build_task
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope, source_sha256
from pod_agent.protocol.messages import DataSelection, ModelRef
from pod_agent.state import PodState, Verdict

SOURCE = "import torch\nclass M:\n    pass\n"


@pytest.fixture
def pod(tmp_path: Path) -> tuple[Path, PodState, IdentityKey]:
    alice = IdentityKey.generate()
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    config = tmp_path / "pod.toml"
    config.write_text(
        f'[pod]\nname = "clinic"\nstate_dir = "{tmp_path / "state"}"\n[datasource]\npath = "{tmp_path / "data.csv"}"\n'
        f'[[security.modellers]]\nname = "alice"\npublic_key = "{alice.public.to_b64()}"\nrole = "super"\n'
    )
    state = PodState.open(tmp_path / "state" / "state.sqlite")
    return config, state, alice


def _record(state: PodState, key: IdentityKey, kind: str, *, now: int, refused: str | None = None) -> str:
    model = ModelRef(style="module", name="tiny", class_name="M", source=SOURCE, sha256=source_sha256(SOURCE))
    task = build_task(modeller_id=key.key_id, cohort=entries(["clinic"], "a" * 64), kind=kind,  # type: ignore[arg-type]
                      model=model, data=DataSelection(target="b"), now=now)
    state.record_verdict(Verdict(
        task_id=task.task_id, nonce=task.nonce, modeller_id=key.key_id, kind=kind,
        envelope_json=envelope_bytes(sign_envelope(task, key)).decode(), accepted=refused is None, reason=refused,
        keep_until=now + 3600, now=now,
    ))
    return task.task_id


def test_list_shows_newest_first_with_outcome_modeller_and_model_hash(
    cli, pod: tuple[Path, PodState, IdentityKey]
) -> None:
    config, state, alice = pod
    trained = _record(state, alice, "train", now=1_800_000_000)
    state.claim_next(now=1_800_000_001)
    state.finish(trained, status="done", result_json="{}", now=1_800_000_002)
    state.mark_delivered(trained, now=1_800_000_003)
    refused = _record(state, alice, "predict", now=1_800_000_010, refused="predict_not_permitted")
    stranger = _record(state, IdentityKey.generate(), "evaluate", now=1_800_000_020)
    state.close()

    listed = cli("tasks", "list", "--config", str(config), "--json")
    assert listed.code == 0, listed.err
    rows = json.loads(listed.out)
    assert [r["task_id"] for r in rows] == [stranger, refused, trained]
    done = rows[2]
    # Delivered is where a task ends: the outcome shown is what it ended as.
    assert (done["outcome"], done["delivered"], done["modeller"]) == ("done", True, "alice")
    assert done["model"] == f"tiny sha256:{source_sha256(SOURCE)[:16]}"
    assert (rows[1]["outcome"], rows[1]["reason"], rows[1]["delivered"]) == ("refused", "predict_not_permitted", False)
    assert "no longer in the policy" in rows[0]["modeller"]
    text = cli("tasks", "list", "--config", str(config), "--limit", "1").out
    assert text.count("\n") == 1 and stranger in text and "2027-01-15 08:00:20" in text


def test_show_gives_the_history_and_the_signed_request_without_the_source(
    cli, pod: tuple[Path, PodState, IdentityKey]
) -> None:
    config, state, alice = pod
    trained = _record(state, alice, "train", now=1_800_000_000)
    state.claim_next(now=1_800_000_001)
    state.finish(trained, status="failed", result_json="{}", reason="wrong_base_class", now=1_800_000_002)
    state.close()
    shown = cli("tasks", "show", trained, "--config", str(config))
    assert shown.code == 0, shown.err
    assert "outcome   failed (wrong_base_class)" in shown.out
    assert "(new) -> accepted" in shown.out and "running -> failed  wrong_base_class" in shown.out
    assert '"source": "<3 lines>"' in shown.out and "import torch" not in shown.out
    missing = cli("tasks", "show", "nope", "--config", str(config))
    assert missing.code != 0 and "no task nope" in missing.err


def test_a_pod_that_never_ran_says_so_and_creates_nothing(cli, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    config = tmp_path / "pod.toml"
    config.write_text(f'[pod]\nname = "clinic"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[datasource]\npath = "{tmp_path / "data.csv"}"\n')
    result = cli("tasks", "list", "--config", str(config))
    assert result.code != 0 and "the agent has not run with this state_dir yet" in result.err
    assert not (tmp_path / "state").exists()
