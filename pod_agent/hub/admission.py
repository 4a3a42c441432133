"""Who may join the hub: the registration policy, one-time enrolment tokens, keys awaiting approval.

Owns ``RegistrationPolicy`` (``open``: any key that proves possession registers, the demo's
default; ``token``: a new key needs an enrolment token made by ``pod-agent hub invite``;
``approve``: a new key is recorded as pending and refused everything but registration until
``pod-agent hub approve``), making tokens (only their sha256 is stored, with an expiry, and
each admits one key) and deciding one registration (``admit``). A key the hub already knows
in that role registers again without a token: a pod registers anew after a restart, when its
registration changed and when the hub refuses its session. The routes are
``registration_routes.py``'s; the tables are ``Storage``'s.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

from pod_agent.errors import HubError
from pod_agent.hub.storage import KeyRole, PendingKey, Storage

RegistrationPolicy = Literal["open", "token", "approve"]
REGISTRATION_POLICIES: tuple[str, ...] = get_args(RegistrationPolicy)
# A day: long enough to hand a token to a pod's owner, short enough that a leaked one soon expires.
DEFAULT_TOKEN_TTL_S = 24 * 3600
# 32 random bytes, url-safe base64 (43 characters): protocol.hub_api.EnrolmentToken's shape.
_TOKEN_BYTES = 32


class RegistrationRefused(HubError):
    """A new key may not register under the hub's policy (HTTP 403); the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=403)


@dataclass(frozen=True)
class Admission:
    """A registration's standing: ``pending`` keys are recorded but refused until approved
    (``to_record``: the pending entry to store once the registration itself is stored);
    ``token_sha256`` is the token spent on it (to give back if the registration then fails)."""

    pending: bool
    token_sha256: str | None = None
    to_record: PendingKey | None = None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def invite(storage: Storage, *, now: int, ttl_s: int = DEFAULT_TOKEN_TTL_S, note: str = "") -> str:
    """A new one-time enrolment token, valid ``ttl_s`` seconds; only its hash is stored."""
    if ttl_s <= 0:
        raise HubError(f"token lifetime {ttl_s} s must be positive; pass --expires-in SECONDS")
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    storage.add_enrolment_token(token_sha256(token), created_at=now, expires_at=now + ttl_s, note=note)
    return token


def approval_hint(key_id: str) -> str:
    return f"key {key_id[:16]}... awaits approval: an admin must run `pod-agent hub approve {key_id}`"


def admit(
    storage: Storage,
    policy: RegistrationPolicy,
    *,
    role: KeyRole,
    key_id: str,
    name: str,
    known: bool,
    token: str | None,
    now: int,
) -> Admission:
    """Decide one registration under ``policy``; raises RegistrationRefused when the key may not join.

    ``known``: the key is already registered in this ``role`` (a re-registration needs nothing more).
    Under ``approve`` the caller stores the registration, then ``to_record`` (the key as pending).
    """
    if known:
        return Admission(pending=storage.key_pending(key_id))
    if policy == "open":
        return Admission(pending=False)
    if policy == "token":
        if token is None:
            raise RegistrationRefused(
                f"this hub admits a new {role} only with an enrolment token: ask its operator to run "
                f"`pod-agent hub invite` and register with the token "
                + ("(hub.enrolment_token in pod.toml)" if role == "pod" else "(--enrolment-token)")
            )
        digest = token_sha256(token)
        if not storage.consume_enrolment_token(digest, key_id=key_id, now=now):
            raise RegistrationRefused(
                "enrolment token is unknown, already used or expired; ask the hub operator for a new one "
                "(`pod-agent hub invite`)"
            )
        return Admission(pending=False, token_sha256=digest)
    return Admission(pending=True, to_record=PendingKey(key_id=key_id, role=role, name=name, requested_at=now))
