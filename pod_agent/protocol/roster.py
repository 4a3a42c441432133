"""The federation roster: the pods a federation's operator vouches for, signed with the federation key.

Owns the roster's wire shape (``FederationRoster`` inside an ``Envelope`` signed by
``signing.sign_envelope``) and what a well-formed one is: names a pod may have, Ed25519
keys that parse, each name once, an expiry after its issue. Whether a pod trusts a
roster (signed by the key its owner pinned, not expired) is ``pod_agent.policy.peers``.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pod_agent.config import PodName
from pod_agent.errors import ProtocolError
from pod_agent.protocol.keys import PublicKey
from pod_agent.protocol.messages import WireModel

# Printable and short: a federation's name is shown on the owner's terminal.
FEDERATION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$"


class RosterPod(WireModel):
    """One pod of the federation: its name and Ed25519 identity key (base64, as `pod-agent keys show` prints)."""

    name: PodName  # a roster names pods as they name themselves in pod.toml
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _is_a_key(cls, value: str) -> str:
        try:
            PublicKey.from_b64(value)
        except ProtocolError as exc:
            raise ValueError(f"not a base64 Ed25519 public key ({exc})") from exc
        return value


class FederationRoster(WireModel):
    """The pods of ``federation`` from ``issued_at`` until ``expires_at`` (Unix seconds)."""

    v: Literal[1] = 1
    federation: str = Field(pattern=FEDERATION_NAME_PATTERN)
    issued_at: int = Field(ge=0)
    expires_at: int
    pods: list[RosterPod]

    @model_validator(mode="after")
    def _consistent(self) -> FederationRoster:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        repeated = sorted(name for name, count in Counter(pod.name for pod in self.pods).items() if count > 1)
        if repeated:
            raise ValueError(f"each pod name may appear once; repeated: {repeated}")
        return self

    def keys(self) -> dict[str, PublicKey]:
        """Pod name -> identity key."""
        return {pod.name: PublicKey.from_b64(pod.public_key) for pod in self.pods}
