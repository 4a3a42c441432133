"""`pod-agent privacy show`: each budget's epsilon spent, reserved and left, from a real state database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pod_agent.policy.budget import epsilon, gaussian_event, unaccounted_event
from pod_agent.protocol import IdentityKey
from pod_agent.state import PodState, Reservation, Verdict

DATASET = "ab" * 32


def _admit_all(*_: Any) -> None:
    return None


@pytest.fixture
def config(tmp_path: Path) -> Path:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    path = tmp_path / "pod.toml"
    path.write_text(
        f'[pod]\nname = "clinic"\nstate_dir = "{tmp_path / "state"}"\n[datasource]\npath = "{tmp_path / "data.csv"}"\n'
        "[privacy]\nmax_clip_norm = 1.0\n[privacy.dp]\ndataset = { epsilon = 20.0, delta = 1e-6 }\n"
        f'[[security.modellers]]\nname = "alice"\npublic_key = "{alice.public.to_b64()}"\nrole = "super"\n'
        "dp = { epsilon = 10.0, delta = 1e-6 }\n"
        f'[[security.modellers]]\nname = "bob"\npublic_key = "{bob.public.to_b64()}"\nrole = "super"\n'
        "dp = { epsilon = 5.0, delta = 1e-6 }\n"
    )
    with PodState.open(tmp_path / "state" / "state.sqlite") as state:
        for index, event in enumerate([gaussian_event(2.0), gaussian_event(2.0), unaccounted_event("evaluate")]):
            state.record_verdict(
                Verdict(task_id=f"t{index}", nonce=f"n{index}", modeller_id=alice.key_id, kind="train",
                        envelope_json="{}", accepted=True, reason=None, keep_until=10**9, now=index),
                Reservation(dataset=DATASET, round=0, events=(event,), admit=_admit_all),
            )
        state.claim_next(now=10)
        state.finish("t0", status="done", result_json="{}", now=11)
    return path


def test_show_gives_spent_reserved_and_left_per_modeller_and_dataset(cli: Any, config: Path) -> None:
    shown = cli("privacy", "show", "--config", str(config), "--json")
    assert shown.code == 0, shown.err
    rows = {row["budget"]: row for row in json.loads(shown.out)}
    assert set(rows) == {"modeller alice", "modeller bob", f"dataset {DATASET[:16]}"}
    alice = rows["modeller alice"]
    assert alice["spent"] == pytest.approx(epsilon([gaussian_event(2.0)], 1e-6))
    assert alice["committed"] == pytest.approx(epsilon([gaussian_event(2.0)] * 2, 1e-6))
    assert alice["left"] == pytest.approx(10.0 - alice["committed"])
    assert (alice["releases"], alice["reserved"], alice["unaccounted"]) == (1, 2, 1)
    assert rows["modeller bob"]["committed"] == 0.0 and rows["modeller bob"]["left"] == 5.0
    text = cli("privacy", "show", "--config", str(config)).out
    assert "modeller alice" in text and "left of 10" in text and "1 unaccounted" in text
