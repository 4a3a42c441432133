"""Trusted peers: pinned peers, this pod, and a federation roster signed under the pinned federation key."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from pod_agent.config.settings import PeerPin, PrivacySection
from pod_agent.errors import ConfigError
from pod_agent.policy import TrustedPeers
from pod_agent.policy.peers import MAX_ROSTER_BYTES, install_roster, read_roster
from pod_agent.protocol import FederationRoster, IdentityKey, RosterPod, envelope_bytes, sign_envelope
from pod_agent.protocol.messages import Envelope

NOW = 1_700_000_000
DAY = 86_400
OWN = IdentityKey.generate()
FEDERATION = IdentityKey.generate()
STRANGER = IdentityKey.generate()
PINNED = {"pod-b": IdentityKey.generate()}
LISTED = {"pod-b": IdentityKey.generate(), "pod-c": IdentityKey.generate(), "pod-d": IdentityKey.generate()}


def roster(pods: dict[str, IdentityKey] | None = None, **fields: Any) -> FederationRoster:
    listed = LISTED if pods is None else pods
    return FederationRoster.model_validate({
        "federation": "acme health", "issued_at": NOW - DAY, "expires_at": NOW + 30 * DAY,
        "pods": [RosterPod(name=name, public_key=key.public.to_b64()) for name, key in sorted(listed.items())],
    } | fields)


def write(path: Path, envelope: Envelope) -> Path:
    path.write_bytes(envelope_bytes(envelope))
    return path


def privacy(roster_path: Path | None, **fields: Any) -> PrivacySection:
    return PrivacySection(**{
        "peers": [PeerPin(name=name, public_key=key.public.to_b64()) for name, key in PINNED.items()],
        "federation_key": FEDERATION.public.to_b64(),
        "federation_roster": roster_path,
    } | fields)


def trusted(section: PrivacySection, now: int = NOW) -> TrustedPeers:
    return TrustedPeers.from_settings(section, own_name="pod-a", own_key=OWN.public, now=now)


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    return write(tmp_path / "roster.json", sign_envelope(roster(), FEDERATION))


def test_roster_pods_join_the_pinned_peers_and_this_pod(signed: Path) -> None:
    peers = trusted(privacy(signed))
    assert peers.names == {"pod-a", "pod-b", "pod-c", "pod-d"}
    assert peers.roster_names == {"pod-c", "pod-d"}
    assert peers.roster is not None and peers.roster.federation == "acme health"
    assert peers.key_for("pod-c", LISTED["pod-c"].key_id, now=NOW) == LISTED["pod-c"].public


def test_a_pinned_peer_wins_over_the_roster_entry_of_its_name(signed: Path) -> None:
    peers = trusted(privacy(signed))
    assert peers.key_for("pod-b", PINNED["pod-b"].key_id, now=NOW) == PINNED["pod-b"].public
    assert peers.key_for("pod-b", LISTED["pod-b"].key_id, now=NOW) is None


def test_a_roster_cannot_give_this_pod_another_key(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", sign_envelope(roster({"pod-a": STRANGER}), FEDERATION))
    peers = trusted(privacy(path))
    assert peers.keys["pod-a"] == OWN.public and peers.roster_names == frozenset()


def test_without_a_roster_only_pinned_peers_and_this_pod_are_trusted() -> None:
    peers = trusted(privacy(None))
    assert peers.names == {"pod-a", "pod-b"} and peers.roster is None


def test_roster_peers_stop_counting_when_the_roster_expires(signed: Path) -> None:
    peers = trusted(privacy(signed))
    expiry = NOW + 30 * DAY
    assert peers.key_for("pod-c", LISTED["pod-c"].key_id, now=expiry - 1) is not None
    assert peers.key_for("pod-c", LISTED["pod-c"].key_id, now=expiry) is None
    assert peers.key_for("pod-b", PINNED["pod-b"].key_id, now=expiry) is not None


def test_an_expired_roster_is_refused_with_the_fix(signed: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"expired 2023-12-14 22:13:20Z: get a current roster .*`pod-agent peers import"
    ):
        trusted(privacy(signed), now=NOW + 30 * DAY)


def test_a_roster_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", sign_envelope(roster(), STRANGER))
    with pytest.raises(
        ConfigError, match=f"signed by key {STRANGER.key_id[:16]}, not the pinned privacy.federation_key"
    ):
        trusted(privacy(path))


def test_a_roster_altered_after_signing_is_refused(tmp_path: Path) -> None:
    envelope = sign_envelope(roster(), FEDERATION)
    pods = [*cast(list[object], envelope.payload["pods"]), {"name": "pod-evil", "public_key": STRANGER.public.to_b64()}]
    forged = envelope.model_copy(update={"payload": envelope.payload | {"pods": pods}})
    with pytest.raises(
        ConfigError, match="does not verify under privacy.federation_key.*altered after signing or forged"
    ):
        trusted(privacy(write(tmp_path / "r.json", forged)))


def test_a_roster_signed_by_another_key_under_the_federations_key_id_is_refused(tmp_path: Path) -> None:
    forged = sign_envelope(roster(), STRANGER).model_copy(update={"signer": FEDERATION.key_id})
    with pytest.raises(ConfigError, match="does not verify"):
        trusted(privacy(write(tmp_path / "r.json", forged)))


def test_a_signed_roster_naming_a_pod_twice_is_refused(tmp_path: Path) -> None:
    # The federation key signs whatever it is given; the pod still refuses the duplicate.
    twice = [RosterPod(name="pod-c", public_key=key.public.to_b64()) for key in (LISTED["pod-c"], STRANGER)]
    unchecked = FederationRoster.model_construct(
        v=1, federation="acme health", issued_at=NOW, expires_at=NOW + DAY, pods=twice
    )
    path = write(tmp_path / "r.json", sign_envelope(unchecked, FEDERATION))
    with pytest.raises(ConfigError, match=r"signed but invalid .*each pod name may appear once; repeated: \['pod-c'\]"):
        trusted(privacy(path))


def test_an_oversized_roster_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(b" " * (MAX_ROSTER_BYTES + 1))
    with pytest.raises(ConfigError, match="too big for a roster"):
        read_roster(path, FEDERATION.public, now=NOW)


def test_a_file_that_is_not_an_envelope_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"pods": []}')
    with pytest.raises(ConfigError, match="is not a signed roster"):
        read_roster(path, FEDERATION.public, now=NOW)


def test_a_roster_path_without_a_federation_key_is_refused(signed: Path) -> None:
    with pytest.raises(ConfigError, match="privacy.federation_key is not set: pin the federation's public key"):
        trusted(privacy(signed, federation_key=None))


def test_a_configured_roster_that_is_missing_says_how_to_import_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist: import .*pod-agent peers import ROSTER.json"):
        trusted(privacy(tmp_path / "absent.json"))


def test_a_malformed_federation_key_is_refused(signed: Path) -> None:
    with pytest.raises(ConfigError, match="privacy.federation_key is not a base64 Ed25519 public key"):
        trusted(privacy(signed, federation_key="bm90IGEga2V5"))


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_install_copies_a_verified_roster_world_readable(signed: Path, tmp_path: Path, strict_umask: None) -> None:
    target = tmp_path / "state" / "roster.json"
    target.parent.mkdir()
    installed = install_roster(signed, privacy(target), now=NOW)
    assert installed.federation == "acme health"
    assert target.read_bytes() == signed.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_install_refuses_a_forged_roster_and_keeps_the_installed_one(signed: Path, tmp_path: Path) -> None:
    target = tmp_path / "installed.json"
    install_roster(signed, privacy(target), now=NOW)
    forged = write(tmp_path / "forged.json", sign_envelope(roster({"pod-evil": STRANGER}), STRANGER))
    with pytest.raises(ConfigError, match="not the pinned privacy.federation_key"):
        install_roster(forged, privacy(target), now=NOW)
    assert target.read_bytes() == signed.read_bytes()


def test_install_refuses_a_roster_older_than_the_installed_one(signed: Path, tmp_path: Path) -> None:
    target = tmp_path / "installed.json"
    install_roster(signed, privacy(target), now=NOW)
    older = write(tmp_path / "older.json", sign_envelope(roster(issued_at=NOW - 2 * DAY), FEDERATION))
    with pytest.raises(ConfigError, match="before the installed one .* may list pods since removed"):
        install_roster(older, privacy(target), now=NOW)
    newer = write(tmp_path / "newer.json", sign_envelope(roster(issued_at=NOW), FEDERATION))
    assert install_roster(newer, privacy(target), now=NOW).issued_at == NOW


def test_install_needs_somewhere_to_put_the_roster(signed: Path) -> None:
    with pytest.raises(ConfigError, match="privacy.federation_roster is not set"):
        install_roster(signed, privacy(None), now=NOW)
