"""`pod-agent keys rotate`: a new identity key, announced in a statement the old key signs, with an overlap."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pod_agent.protocol import IdentityKey, PublicKey, parse_envelope, sign_envelope, verify_envelope
from pod_agent.protocol.messages import ResultPayload
from pod_agent.protocol.rotation import PinOutdated, keys_in_force, rotation_statement

DAY_S = 86400


def _signed_result(key: IdentityKey) -> Any:
    return sign_envelope(ResultPayload(task_id="t", pod="clinic", kind="evaluate", status="done", produced_at=1), key)


def _accepted(envelope: Any, keys: list[PublicKey]) -> bool:
    """What a modeller that pinned the old key does with a result: any key in force must verify it."""
    for key in keys:
        if key.key_id == envelope.signer:
            verify_envelope(envelope, key)
            return True
    return False


def test_rotate_keeps_old_and_new_during_the_overlap_and_refuses_the_old_after(
    cli: Callable[..., Any], tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    old = IdentityKey.generate()
    old.save(state_dir / "identity.pem")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    config = tmp_path / "pod.toml"
    config.write_text(
        f'[pod]\nname = "clinic"\nstate_dir = "{state_dir}"\n[datasource]\npath = "{tmp_path / "data.csv"}"\n'
    )

    rotated = cli("keys", "rotate", "--config", str(config), "--overlap-days", "2")
    assert rotated.code == 0, rotated.err
    new = IdentityKey.load(state_dir / "identity.pem")
    assert new.key_id != old.key_id and f"key id {new.key_id}" in rotated.out
    statement = parse_envelope(next(state_dir.glob("key-rotation-*.json")).read_bytes())
    assert statement.signer == old.key_id

    now = int(time.time())
    during = keys_in_force(old.public, [statement], pod="clinic", now=now + DAY_S)
    assert [k.key_id for k in during] == [new.key_id, old.key_id]
    assert _accepted(_signed_result(old), during) and _accepted(_signed_result(new), during)
    # After the overlap the old pin hands nothing on: old and new key alike wait for the new key's pin.
    with pytest.raises(PinOutdated, match=f"rotated its pinned key to {re.escape(new.public.to_b64())}, .* pin it$"):
        keys_in_force(old.public, [statement], pod="clinic", now=now + 3 * DAY_S)
    assert keys_in_force(new.public, [statement], pod="clinic", now=now + 3 * DAY_S) == [new.public]


def test_a_statement_not_signed_by_the_pinned_key_hands_nothing_on() -> None:
    pinned, impostor, evil = IdentityKey.generate(), IdentityKey.generate(), IdentityKey.generate()
    forged = rotation_statement(pod="clinic", old=impostor, new=evil.public, now=100, overlap_s=10)
    other_pod = rotation_statement(pod="lab", old=pinned, new=evil.public, now=100, overlap_s=10)
    assert keys_in_force(pinned.public, [forged, other_pod], pod="clinic", now=105) == [pinned.public]


def test_rotations_chain_from_the_pin() -> None:
    first, second, third = IdentityKey.generate(), IdentityKey.generate(), IdentityKey.generate()
    statements = [rotation_statement(pod="clinic", old=second, new=third.public, now=200, overlap_s=50),
                  rotation_statement(pod="clinic", old=first, new=second.public, now=100, overlap_s=150)]
    assert keys_in_force(first.public, statements, pod="clinic", now=220) == [third.public, second.public,
                                                                                first.public]
