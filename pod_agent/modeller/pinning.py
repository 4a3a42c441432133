"""Pod identity keys the modeller pins out of band, so a hostile hub cannot forge results.

Without pins the modeller takes each pod's key from the hub's registry (trust on
first use): a hub that swapped a key could sign results, and round keys, of its own.
A pod-keys file is TOML, one line per pod, as `pod-agent keys show` prints it on the
pod's host::

    "hospital-a" = "k0mZ...base64 Ed25519 public key...="

With pins, a result or round key from a pod not in the file is refused.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pod_agent.errors import ModellerError, ProtocolError
from pod_agent.protocol import PublicKey


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
