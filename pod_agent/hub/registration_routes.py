"""Registration routes of the hub: a pod or a modeller registers (or updates) its key, as the registration
policy admits it (``admission.py``: open, enrolment token, or held for the admin's approval).

A registration is signed by the key it registers (proof of possession; ``auth.py`` lets an unknown key offer
itself on these two routes only). A pod may take over its name under a new key only with a rotation statement
its held key signed; the statement is kept for modellers that pinned the old key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from pod_agent.errors import HubError, ProtocolError
from pod_agent.hub.admission import Admission, admit, approval_hint
from pod_agent.hub.auth import SIGNER, SIGNER_MODELLER, SIGNER_POD, body_of
from pod_agent.hub.hubstate import HubState, hub_of
from pod_agent.hub.reading import parse_body
from pod_agent.hub.storage import KeyRole, ModellerRecord, PodRecord
from pod_agent.protocol import (
    Envelope,
    ModellerRegistration,
    PodRegistration,
    PublicKey,
    envelope_bytes,
    verified_rotation,
)

_log = logging.getLogger(__name__)

_R = TypeVar("_R")

routes = web.RouteTableDef()


@routes.post("/v1/pods/register", name="pods_register")
async def _pods_register(request: web.Request) -> web.Response:
    hub = hub_of(request)
    reg: PodRegistration = parse_body(PodRegistration, body_of(request))
    key, admission = await _admission(
        request, role="pod", public_key=reg.public_key, name=reg.name, token=reg.enrolment_token
    )
    now = hub.now()
    existing = await hub.db(hub.storage.get_pod, reg.name)
    if existing is not None and existing.key_id != key.key_id and reg.rotation is not None:
        _check_rotation(reg.name, reg.rotation, held=PublicKey.from_b64(existing.public_key), new=key)
        await hub.db(hub.storage.release_pod, reg.name)
        # Kept for modellers that pinned the old key: they follow it to the new one (``GET /v1/pods``).
        await hub.db(hub.storage.add_pod_rotation, reg.name, envelope_bytes(reg.rotation), now=now)
        _log.info("pod re-keyed by a rotation statement its old key signed", extra={"pod": reg.name})
    record = PodRecord(
        name=reg.name, key_id=key.key_id, public_key=reg.public_key, schema=reg.schema_public,
        schema_hash=reg.schema_hash, row_count=reg.row_count, sandbox_level=reg.sandbox_level,
        heartbeat_s=reg.heartbeat_s, registered_at=existing.registered_at if existing else now,
        last_seen=now,
    )
    await _store_registration(hub, admission, hub.storage.upsert_pod, record)
    _log.info("pod registered%s", " (pending approval)" if admission.pending else "", extra={"pod": reg.name})
    return _registered({"pod": reg.name, "key_id": key.key_id, "new": existing is None}, admission, key.key_id)


def _check_rotation(name: str, rotation: Envelope, *, held: PublicKey, new: PublicKey) -> None:
    """A registration under a new key may take over its name only with a statement the held key signed."""
    try:
        statement = verified_rotation(rotation, held)
    except ProtocolError as exc:
        raise HubError(f"pod {name!r}: the key rotation statement is not signed by the key the hub holds "
                       f"for it ({exc})", status=403) from exc
    if statement.pod != name or statement.new_key != new.to_b64():
        raise HubError(f"pod {name!r}: the key rotation statement names another pod or key", status=403)


@routes.post("/v1/modellers/register", name="modellers_register")
async def _modellers_register(request: web.Request) -> web.Response:
    hub = hub_of(request)
    reg: ModellerRegistration = parse_body(ModellerRegistration, body_of(request))
    key, admission = await _admission(
        request, role="modeller", public_key=reg.public_key, name=reg.name, token=reg.enrolment_token
    )
    record = ModellerRecord(key.key_id, reg.public_key, reg.name, hub.now())
    await _store_registration(hub, admission, hub.storage.upsert_modeller, record)
    return _registered({"key_id": key.key_id}, admission, key.key_id)


async def _admission(
    request: web.Request, *, role: KeyRole, public_key: str, name: str, token: str | None
) -> tuple[PublicKey, Admission]:
    """The key a registration offers, which must be the key that signed it (403), and the registration policy's
    word on it registering as ``role`` (raises RegistrationRefused)."""
    key = PublicKey.from_b64(public_key)
    if key.key_id != request[SIGNER]:
        raise HubError("registration must be signed by the key it registers", status=403)
    hub = hub_of(request)
    known = (request[SIGNER_POD] if role == "pod" else request[SIGNER_MODELLER]) is not None
    admission: Admission = await hub.db(
        admit, hub.storage, hub.registration, role=role, key_id=request[SIGNER], name=name, known=known,
        token=token, now=hub.now(),
    )
    return key, admission


async def _store_registration(hub: HubState, admission: Admission, store: Callable[[_R], None], record: _R) -> None:
    """Store a registration, then its pending entry; a registration that fails gives its token back."""
    try:
        await hub.db(store, record)
    except HubError:
        if admission.token_sha256 is not None:
            await hub.db(hub.storage.release_enrolment_token, admission.token_sha256)
        raise
    if admission.to_record is not None:
        await hub.db(hub.storage.add_pending_key, admission.to_record)


def _registered(reply: dict[str, Any], admission: Admission, key_id: str) -> web.Response:
    if not admission.pending:
        return web.json_response(reply)
    # 202: recorded, not yet admitted; the pod or modeller retries and is refused (403) until approved.
    return web.json_response({**reply, "pending": True, "message": approval_hint(key_id)}, status=202)
