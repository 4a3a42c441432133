"""A pod's identity-key rotation: the new key announced in a statement the old key signs.

Owns the statement (``KeyRotation``: pod, old and new key, when, and the end of the overlap)
and the rule a party that pinned the old key follows (``keys_in_force``): until
``overlap_until`` both keys are the pod's, so results signed under the old pin are still
accepted and the new key is taken on; after it the pin is out of date (``PinOutdated``): the
old key is retired and a statement it signed hands nothing on any more, so the party pins the
new key out of band, as it pinned the first. Statements chain (each signed by the key in force
before it), so a pin survives several rotations made within their windows. A statement signed
by any other key (the new key itself, a hub) is ignored: only the pinned key can hand its
trust on. ``pod-agent keys rotate`` (``cli/keys.py``) writes one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, ValidationError

from pod_agent.errors import ProtocolError
from pod_agent.protocol.keys import IdentityKey, PublicKey
from pod_agent.protocol.messages import Envelope, WireModel
from pod_agent.protocol.signing import first_error, sign_envelope, verify_envelope

# The default time modellers have to pin the new key while results under the old one still count.
DEFAULT_OVERLAP_S = 7 * 24 * 3600


class PinOutdated(ProtocolError):
    """The pinned key was rotated away and the overlap its statement gave has ended: pin the new key."""

    def __init__(self, pod: str, new_key: str, overlap_until: int) -> None:
        self.pod, self.new_key, self.overlap_until = pod, new_key, overlap_until
        ended = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(overlap_until))
        super().__init__(
            f"pod {pod!r} rotated its pinned key to {new_key}, and the overlap for the old key ended {ended}: "
            f"check the new key with the pod's owner (`pod-agent keys show` on its host) and pin it"
        )


class KeyRotation(WireModel):
    """Signed by ``old_key``: from ``issued_at`` the pod signs with ``new_key``; ``old_key`` counts until
    ``overlap_until``."""

    v: Literal[1] = 1
    kind: Literal["key_rotation"] = "key_rotation"
    pod: str
    old_key: str  # base64 raw Ed25519, as `pod-agent keys show` prints it
    new_key: str
    issued_at: int
    overlap_until: int = Field(ge=0)


def rotation_statement(*, pod: str, old: IdentityKey, new: PublicKey, now: int, overlap_s: int) -> Envelope:
    """The statement announcing ``new``, signed by ``old``."""
    statement = KeyRotation(pod=pod, old_key=old.public.to_b64(), new_key=new.to_b64(), issued_at=now,
                            overlap_until=now + overlap_s)
    return sign_envelope(statement, old)


def verified_rotation(envelope: Envelope, signer: PublicKey) -> KeyRotation:
    """The statement, when ``signer`` (the key in force) signed it and it names ``signer`` as the old key."""
    body = verify_envelope(envelope, signer)
    try:
        statement = KeyRotation.model_validate_json(body)
    except ValidationError as exc:
        raise ProtocolError(f"key rotation statement is invalid at {first_error(exc, root='payload')}") from exc
    if statement.old_key != signer.to_b64():
        raise ProtocolError("key rotation statement is signed by a key other than the one it retires")
    return statement


def keys_in_force(pinned: PublicKey, statements: Sequence[Envelope], *, pod: str, now: int) -> list[PublicKey]:
    """The keys a party that pinned ``pinned`` for ``pod`` accepts now, newest first.

    Follows the chain of statements from the pinned key while each step's overlap lasts (its old key stays
    in force until then); PinOutdated once a step's overlap has ended. Statements not signed by the key in
    force at their step, for another pod, or issued later than ``now`` are skipped.
    """
    current, retiring = pinned, []
    remaining = list(statements)
    advanced = True
    while advanced:
        advanced = False
        for envelope in remaining:
            if envelope.signer != current.key_id:
                continue
            try:
                statement = verified_rotation(envelope, current)
            except ProtocolError:
                continue
            if statement.pod != pod or statement.issued_at > now:
                continue
            if now > statement.overlap_until:
                raise PinOutdated(pod, statement.new_key, statement.overlap_until)
            retiring.append(current)
            current = PublicKey.from_b64(statement.new_key)
            remaining.remove(envelope)
            advanced = True
            break
    return [current, *reversed(retiring)]
