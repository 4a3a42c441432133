"""The peers this pod trusts in a secure-aggregation cohort, decided by the pod owner alone.

Owns ``TrustedPeers``: pod name -> Ed25519 identity key, built from ``[[privacy.peers]]``
in pod.toml (and this pod itself), plus the pods of a federation roster when the owner
pinned the federation's key (``privacy.federation_key``) and imported its signed roster
(``privacy.federation_roster``). Nothing the hub or a modeller sends can add a peer: a
cohort is accepted only when every participant is listed here under its name with the
same key id, and a round key counts only when its announcement verifies under the key
listed here. A pinned peer wins over a roster entry of the same name.

Also owns reading a roster file (``read_roster``) and installing a new one
(``install_roster``, behind ``pod-agent peers import``). The roster's wire shape is
``pod_agent.protocol.roster``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from pod_agent.config import PrivacySection
from pod_agent.errors import ConfigError, ProtocolError
from pod_agent.protocol import FederationRoster, PublicKey, first_error, parse_envelope, verify_envelope

# A roster line is ~120 bytes, so this holds thousands of pods; anything bigger is not a roster.
MAX_ROSTER_BYTES = 1 << 20
ROSTER_FILE_MODE = 0o644  # public keys only: the agent and the owner's tools may read it
_IMPORT_HINT = "`pod-agent peers import ROSTER.json --config pod.toml`"
_FRESH_HINT = f"get a current roster from the federation's operator and run {_IMPORT_HINT}"


@dataclass(frozen=True)
class TrustedPeers:
    """Pod name -> identity key of every peer the owner trusts, this pod included.

    ``roster`` is the verified federation roster merged in (None without one);
    ``roster_names`` are the names trusted through it alone, whose keys stop counting
    once it expires.
    """

    keys: Mapping[str, PublicKey]
    roster: FederationRoster | None = None
    roster_names: frozenset[str] = frozenset()

    @classmethod
    def from_settings(
        cls, privacy: PrivacySection, *, own_name: str, own_key: PublicKey, now: int | None = None
    ) -> TrustedPeers:
        """``[[privacy.peers]]`` plus this pod, plus the federation roster where one is configured.

        A bad key, a peer named like this pod, or a roster that ``load_roster`` refuses is a
        ConfigError. ``now`` (Unix seconds, default: the clock) is when the roster must be valid.
        """
        keys: dict[str, PublicKey] = {own_name: own_key}
        for index, peer in enumerate(privacy.peers):
            key = configured_key(
                peer.public_key, where=f"privacy.peers[{index}].public_key ({peer.name!r})",
                fix="paste what `pod-agent keys show` prints on that pod",
            )
            if peer.name == own_name and key != own_key:
                raise ConfigError(
                    f"privacy.peers[{index}] is named {own_name!r} like this pod but holds another key: "
                    "remove it or rename it"
                )
            keys[peer.name] = key
        pinned = cls(keys)
        roster = load_roster(privacy, now=_now(now))
        return pinned if roster is None else pinned.with_roster(roster)

    def with_roster(self, roster: FederationRoster) -> TrustedPeers:
        """These peers plus the pods of ``roster`` (verified under the owner's pinned federation
        key); a name already trusted keeps its key."""
        merged: dict[str, PublicKey] = roster.keys()
        added = frozenset(merged) - frozenset(self.keys)
        merged.update(self.keys)
        return TrustedPeers(merged, roster=roster, roster_names=added)

    def key_for(self, name: str, key_id: str, *, now: int | None = None) -> PublicKey | None:
        """The trusted key of ``name`` when its key id is ``key_id``; None for a stranger, a
        swapped key, or a roster-only peer once the roster has expired at ``now`` (default: the clock)."""
        key = self.keys.get(name)
        if key is None or key.key_id != key_id:
            return None
        if name in self.roster_names and self.roster is not None and _now(now) >= self.roster.expires_at:
            return None
        return key

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.keys)


def configured_key(text: str, *, where: str, fix: str) -> PublicKey:
    """An Ed25519 public key written in pod.toml at ``where``; a ConfigError that says ``fix`` otherwise."""
    try:
        return PublicKey.from_b64(text)
    except ProtocolError as exc:
        raise ConfigError(f"{where} is not a base64 Ed25519 public key: {fix}") from exc


def federation_key(privacy: PrivacySection) -> PublicKey:
    """The federation key the owner pinned; ConfigError saying what to set when it is missing or malformed."""
    if privacy.federation_key is None:
        raise ConfigError(
            "privacy.federation_key is not set: pin the federation's public key (base64, as "
            "`pod-agent peers sign` prints it to its operator) in pod.toml first"
        )
    return configured_key(
        privacy.federation_key, where="privacy.federation_key", fix="paste the key the federation's operator publishes"
    )


def load_roster(privacy: PrivacySection, *, now: int) -> FederationRoster | None:
    """The configured roster (``privacy.federation_roster``), verified; None when none is configured.

    A roster path without a pinned ``privacy.federation_key`` is refused: nothing could vouch for it.
    """
    path = privacy.federation_roster
    if path is None:
        return None
    key = federation_key(privacy)
    if not path.exists():
        raise ConfigError(
            f"privacy.federation_roster {path} does not exist: import the federation's roster with {_IMPORT_HINT}, "
            "or remove the key"
        )
    return read_roster(path, key, now=now)


def read_roster(path: Path, key: PublicKey, *, now: int) -> FederationRoster:
    """The roster in ``path`` once it passes, in this order: size, parse, signer, signature,
    payload (version, names, keys, each name once), expiry. ConfigError names the file and the fix."""
    return _verify(_read_bounded(path), path, key, now=now)


def install_roster(candidate: Path, privacy: PrivacySection, *, now: int) -> FederationRoster:
    """Verify ``candidate`` as ``read_roster`` does and copy it to ``privacy.federation_roster`` (mode 0644).

    Refuses a roster older (by ``issued_at``) than the installed one while that one still
    verifies: an old roster may list a pod the federation has since removed.
    """
    target = privacy.federation_roster
    if target is None:
        raise ConfigError(
            "privacy.federation_roster is not set: set it in pod.toml to where the agent should keep "
            "the roster (e.g. under pod.state_dir), then import again"
        )
    key = federation_key(privacy)
    raw = _read_bounded(candidate)
    roster = _verify(raw, candidate, key, now=now)
    installed = _installed(target, key, now=now)
    if installed is not None and roster.issued_at < installed.issued_at:
        raise ConfigError(
            f"roster {candidate} was issued {_utc(roster.issued_at)}, before the installed one "
            f"({_utc(installed.issued_at)}): an older roster may list pods since removed - {_FRESH_HINT}"
        )
    _write_public(target, raw)
    return roster


def _installed(target: Path, key: PublicKey, *, now: int) -> FederationRoster | None:
    """The installed roster if it still verifies; one that does not (expired, re-keyed) is simply replaced."""
    if not target.exists():
        return None
    try:
        return read_roster(target, key, now=now)
    except ConfigError:
        return None


def _read_bounded(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_ROSTER_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"federation roster {path} cannot be read ({exc.strerror}): check the path") from exc
    if len(raw) > MAX_ROSTER_BYTES:
        raise ConfigError(
            f"federation roster {path} is over {MAX_ROSTER_BYTES} bytes, too big for a roster: "
            "check that it is the file `pod-agent peers sign` wrote"
        )
    return raw


def _verify(raw: bytes, path: Path, key: PublicKey, *, now: int) -> FederationRoster:
    where = f"federation roster {path}"
    try:
        envelope = parse_envelope(raw)
    except ProtocolError as exc:
        raise ConfigError(
            f"{where} is not a signed roster ({exc}): check that it is the file `pod-agent peers sign` wrote"
        ) from exc
    if envelope.signer != key.key_id:
        raise ConfigError(
            f"{where} is signed by key {envelope.signer[:16]}, not the pinned privacy.federation_key "
            f"({key.key_id[:16]}): get the roster from your federation's operator, or pin its key if you trust it"
        )
    try:
        body = verify_envelope(envelope, key)
    except ProtocolError as exc:
        raise ConfigError(
            f"{where}: the signature does not verify under privacy.federation_key, so the file was altered "
            f"after signing or forged - {_FRESH_HINT}"
        ) from exc
    try:
        roster = FederationRoster.model_validate_json(body)
    except ValidationError as exc:
        raise ConfigError(
            f"{where} is signed but invalid at {first_error(exc, root='payload')}: "
            "ask the federation's operator to fix and re-sign it"
        ) from exc
    if now >= roster.expires_at:
        raise ConfigError(
            f"{where} (federation {roster.federation!r}) expired {_utc(roster.expires_at)}: {_FRESH_HINT}"
        )
    return roster


def _write_public(target: Path, raw: bytes) -> None:
    """Write ``raw`` to ``target`` atomically with mode 0644 whatever the umask."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ROSTER_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), ROSTER_FILE_MODE)
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write the roster to privacy.federation_roster {target} ({exc.strerror}): "
            "create its directory or point the key somewhere writable"
        ) from exc


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def _utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
