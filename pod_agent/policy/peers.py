"""The peers this pod trusts in a secure-aggregation cohort, decided by the pod owner alone.

Owns ``TrustedPeers``: pod name -> Ed25519 identity key, built from ``[[privacy.peers]]``
in pod.toml (and this pod itself). Nothing the hub or a modeller sends can add a
peer: a cohort is accepted only when every participant is listed here under its
name with the same key id, and a round key counts only when its announcement
verifies under the key listed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pod_agent.config.settings import PrivacySection
from pod_agent.errors import ConfigError, ProtocolError
from pod_agent.protocol.keys import PublicKey


@dataclass(frozen=True)
class TrustedPeers:
    """Pod name -> identity key of every peer the owner trusts, this pod included."""

    keys: Mapping[str, PublicKey]

    @classmethod
    def from_settings(cls, privacy: PrivacySection, *, own_name: str, own_key: PublicKey) -> TrustedPeers:
        """``[[privacy.peers]]`` plus this pod; a bad key or a peer named like this pod is a ConfigError."""
        keys: dict[str, PublicKey] = {own_name: own_key}
        for index, peer in enumerate(privacy.peers):
            try:
                key = PublicKey.from_b64(peer.public_key)
            except ProtocolError as exc:
                raise ConfigError(
                    f"privacy.peers[{index}].public_key ({peer.name!r}) is not a base64 Ed25519 public key: "
                    "paste what `pod-agent keys show` prints on that pod"
                ) from exc
            if peer.name == own_name and key != own_key:
                raise ConfigError(
                    f"privacy.peers[{index}] is named {own_name!r} like this pod but holds another key: "
                    "remove it or rename it"
                )
            keys[peer.name] = key
        return cls(keys)

    def with_more(self, peers: Iterable[tuple[str, PublicKey]]) -> TrustedPeers:
        """These peers plus ``peers`` (from a roster the owner's pinned federation key signed);
        a name already pinned keeps its pinned key."""
        merged = dict(peers)
        merged.update(self.keys)
        return TrustedPeers(merged)

    def key_for(self, name: str, key_id: str) -> PublicKey | None:
        """The trusted key of ``name`` when its key id is ``key_id``; None for a stranger or a swapped key."""
        key = self.keys.get(name)
        return key if key is not None and key.key_id == key_id else None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.keys)
