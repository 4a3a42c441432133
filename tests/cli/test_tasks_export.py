"""`pod-agent tasks export|verify-export`: the audit log written from a real state DB and checked back."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from task_support import entries

from pod_agent.modeller import build_task
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope
from pod_agent.state import PodState, Verdict


def test_export_then_verify_and_a_changed_line_fails(cli: Callable[..., Any], tmp_path: Path) -> None:
    alice = IdentityKey.generate()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    IdentityKey.generate().save(state_dir / "identity.pem")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    config = tmp_path / "pod.toml"
    config.write_text(
        f'[pod]\nname = "clinic"\nstate_dir = "{state_dir}"\n[datasource]\npath = "{tmp_path / "data.csv"}"\n'
        f'[[security.modellers]]\nname = "alice"\npublic_key = "{alice.public.to_b64()}"\nrole = "super"\n'
    )
    with PodState.open(state_dir / "state.sqlite") as state:
        for now in (1_790_000_000, 1_800_000_000):  # 2026-09-21 and 2027-01-15
            task = build_task(modeller_id=alice.key_id, cohort=entries(["clinic"], "a" * 64), kind="schema-stats",
                              now=now)
            state.record_verdict(Verdict(
                task_id=task.task_id, nonce=task.nonce, modeller_id=alice.key_id, kind="schema-stats",
                envelope_json=envelope_bytes(sign_envelope(task, alice)).decode(), accepted=True, reason=None,
                keep_until=now + 3600, now=now,
            ))
    out = tmp_path / "audit.jsonl"
    exported = cli("tasks", "export", "--config", str(config), "--since", "2027-01-01", "--out", str(out))
    assert exported.code == 0, exported.err
    assert "wrote 1 task(s) since 2027-01-01" in exported.out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = out.read_text().splitlines()
    assert json.loads(lines[1])["modeller"] == "alice"

    verified = cli("tasks", "verify-export", str(out), "--config", str(config))
    assert verified.code == 0, verified.err
    assert "ok: 1 task(s) from pod clinic, chain intact, signed by the pod's identity key" in verified.out

    out.write_text("\n".join([lines[0], lines[1].replace('"schema-stats"', '"evaluate"'), *lines[2:]]) + "\n")
    broken = cli("tasks", "verify-export", str(out))
    assert broken.code != 0
    assert "audit export line 3: does not chain to line 2" in broken.err
