"""Pod identity keys the modeller pins out of band, so a hostile hub cannot forge results.

Without pins the modeller takes each pod's key from the hub's registry (trust on
first use): a hub that swapped a key could sign results, and round keys, of its own.
A pod-keys file is TOML, one line per pod, as `pod-agent keys show` prints it on the
pod's host::

    "hospital-a" = "k0mZ...base64 Ed25519 public key...="

With pins, a result or round key from a pod not in the file is refused.

A pod that rotated its key (`pod-agent keys rotate`) hands the name on in a statement its old
key signs, which the hub relays in its pod listing. ``keys_in_force`` follows those statements
from each pin (``protocol.keys_in_force``): during a statement's overlap both keys verify and the
new one signs the round keys; a statement signed by any other key is ignored, so a hub that swaps
a key gets its results refused; once the overlap has ended the pin is out of date, and that pod's
results are refused with the new key named, to be checked with its owner and pinned.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pod_agent.errors import ModellerError, ProtocolError
from pod_agent.protocol import Envelope, PinOutdated, PublicKey, keys_in_force


def load_pod_keys(path: Path) -> dict[str, PublicKey]:
    """Pod name -> pinned public key from a pod-keys file; ModellerError naming the file and entry on a fault."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModellerError(f"pod keys file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModellerError(f"pod keys file {path} is not TOML: {exc}") from exc
    pinned: dict[str, PublicKey] = {}
    for name, value in table.items():
        if not isinstance(value, str):
            raise ModellerError(f'pod keys file {path}: {name} must be a string: {name} = "<base64 public key>"')
        try:
            pinned[name] = PublicKey.from_b64(value)
        except ProtocolError as exc:
            raise ModellerError(f"pod keys file {path}: {name}: {exc}; copy it from `pod-agent keys show`") from exc
    if not pinned:
        raise ModellerError(f"pod keys file {path} pins no pods; add lines as printed by `pod-agent keys show`")
    return pinned


def pin_line(pod: str, public_key_b64: str) -> str:
    """The pod-keys file line for one pod; the name is quoted, as a bare ``a.b`` would be a nested table."""
    return f"{json.dumps(pod)} = {json.dumps(public_key_b64)}"


@dataclass(frozen=True)
class PodKeys:
    """Each pod's identity keys in force now, newest first (the first signs its round keys), and the pods
    whose pin is out of date, with why."""

    in_force: Mapping[str, Sequence[PublicKey]]
    outdated: Mapping[str, PinOutdated]

    def of(self, pod: str) -> Sequence[PublicKey] | None:
        """The pod's keys in force; None when it has none; ModellerError when its pin is out of date."""
        if pod in self.outdated:
            raise ModellerError(str(self.outdated[pod]))
        return self.in_force.get(pod)


def hub_keys(listed: Mapping[str, str]) -> PodKeys:
    """The keys the hub lists (pod name -> base64 key), taken on its word (trust on first use)."""
    return PodKeys(in_force={pod: [PublicKey.from_b64(key)] for pod, key in listed.items()}, outdated={})


def pinned_keys(
    pinned: Mapping[str, PublicKey], rotations: Mapping[str, Sequence[Envelope]], *, now: int
) -> PodKeys:
    """The pinned keys, each followed through the rotation statements the hub relays for its pod."""
    in_force: dict[str, Sequence[PublicKey]] = {}
    outdated: dict[str, PinOutdated] = {}
    for pod, key in pinned.items():
        try:
            in_force[pod] = keys_in_force(key, rotations.get(pod, ()), pod=pod, now=now)
        except PinOutdated as exc:
            outdated[pod] = exc
    return PodKeys(in_force=in_force, outdated=outdated)
