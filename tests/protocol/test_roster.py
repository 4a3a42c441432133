"""The federation roster's wire shape: what a well-formed roster is, and that it signs and opens."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pod_agent.errors import ProtocolError
from pod_agent.protocol import FederationRoster, IdentityKey, open_envelope, sign_envelope

KEY = IdentityKey.generate().public.to_b64()
GOOD: dict[str, Any] = {
    "federation": "acme health", "issued_at": 100, "expires_at": 200,
    "pods": [{"name": "pod-b", "public_key": KEY}, {"name": "pod-c", "public_key": KEY}],
}


def test_a_roster_signs_and_opens_under_the_federation_key() -> None:
    federation = IdentityKey.generate()
    roster = FederationRoster.model_validate(GOOD)
    assert open_envelope(sign_envelope(roster, federation), FederationRoster, federation.public) == roster
    with pytest.raises(ProtocolError, match="is not the expected key"):
        open_envelope(sign_envelope(roster, federation), FederationRoster, IdentityKey.generate().public)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"expires_at": 100}, "expires_at must be after issued_at"),
        ({"pods": [{"name": "pod-b", "public_key": KEY}] * 2}, r"repeated: \['pod-b'\]"),
        ({"pods": [{"name": "pod-b", "public_key": "AAAA"}]}, "not a base64 Ed25519 public key"),
        ({"pods": [{"name": "../pod", "public_key": KEY}]}, "should match pattern"),
        ({"federation": "acme\x1b[2J"}, "should match pattern"),
        ({"v": 2}, "Input should be 1"),
        ({"extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_a_malformed_roster_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FederationRoster.model_validate(GOOD | change)
