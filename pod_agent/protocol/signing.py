"""Signed envelopes: ``{v, payload, signer, signature}`` around a wire model.

Owns what a signature covers: exactly ``canonical_json(payload)``, Ed25519, by the
key whose id is ``signer``. ``open_envelope`` verifies before it parses, and parses
the canonical (NFC) bytes it verified, so the receiver acts on exactly what was
signed. Who is allowed to sign what is the policy's business (``pod_agent.policy``).

No domain-separation prefix is added: a task, a result and a round-key announcement
cannot be mistaken for each other because every wire model forbids unknown fields
and requires fields the others lack.
"""

from __future__ import annotations

import base64
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from pod_agent.errors import ProtocolError
from pod_agent.protocol.canonical import canonical_json, parse_json
from pod_agent.protocol.keys import IdentityKey, PublicKey, b64decode_strict
from pod_agent.protocol.messages import Envelope

T = TypeVar("T", bound=BaseModel)


def first_error(exc: ValidationError, *, root: str) -> str:
    """The first error as ``"<where>: <message>"`` for one-line refusals; ``root`` names a whole-value location."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or root
    return f"{where}: {first['msg']}"


def sign_envelope(payload: BaseModel, key: IdentityKey) -> Envelope:
    """Sign ``payload`` with ``key``; the envelope carries the canonical (NFC) form of the payload."""
    body = canonical_json(payload)
    return Envelope(
        payload=parse_json(body),
        signer=key.key_id,
        signature=base64.b64encode(key.sign(body)).decode("ascii"),
    )


def verify_envelope(env: Envelope, public_key: PublicKey) -> bytes:
    """Check signer id and signature; return the canonical payload bytes that were verified."""
    if env.signer != public_key.key_id:
        raise ProtocolError(
            f"envelope signer {env.signer[:16]} is not the expected key {public_key.key_id[:16]}: "
            "sign with the registered key"
        )
    signature = b64decode_strict(env.signature, what="envelope signature")
    body = canonical_json(env.payload)
    public_key.verify(signature, body)
    return body


def open_envelope(env: Envelope, model: type[T], public_key: PublicKey) -> T:
    """Verify ``env`` against ``public_key``, then parse its payload as ``model``."""
    body = verify_envelope(env, public_key)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ProtocolError(f"signed {model.__name__} is invalid at {first_error(exc, root='payload')}") from exc


def parse_envelope(raw: bytes | str) -> Envelope:
    """Parse envelope JSON strictly (no duplicate keys, no NaN) without verifying it."""
    try:
        return Envelope.model_validate(parse_json(raw))
    except ValidationError as exc:
        raise ProtocolError(f"envelope is invalid at {first_error(exc, root='envelope')}") from exc


def envelope_bytes(env: Envelope) -> bytes:
    """The envelope as canonical JSON bytes, for the wire or the state DB."""
    return canonical_json(env)
