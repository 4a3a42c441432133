"""What a route handler of the hub reads of an authenticated request: its body as a pydantic model, a signed
envelope opened against its sender's own key, a long poll's query. Each answers a malformed request with a
``HubError`` whose status (400, 403) and message tell the sender what to fix.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from pod_agent.errors import HubError, ProtocolError
from pod_agent.hub.hubstate import MAX_LONG_POLL_S
from pod_agent.protocol import Envelope, PublicKey, first_error, open_envelope, parse_envelope

_T = TypeVar("_T", bound=BaseModel)


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise HubError(f"bad request body: {first_error(exc, root='body')}", status=400) from exc


def opened(raw: bytes | dict[str, Any], model: type[_T], key: PublicKey, *, what: str) -> tuple[Envelope, _T]:
    """The envelope and its payload, signed by ``key`` (the sender's own): 400 if malformed or forged, 403 if
    signed by another key."""
    try:
        envelope = parse_envelope(raw) if isinstance(raw, bytes) else Envelope.model_validate(raw)
    except (ValidationError, ProtocolError) as exc:
        raise HubError(f"{what} envelope malformed: {exc}", status=400) from exc
    if envelope.signer != key.key_id:
        raise HubError(f"{what} must be signed by the sender's own key", status=403)
    try:
        return envelope, open_envelope(envelope, model, key)
    except ProtocolError as exc:
        raise HubError(f"{what} envelope rejected: {exc}", status=400) from exc


def long_poll_query(request: web.Request, *, what: str) -> tuple[float, int]:
    """A long poll's ``wait`` (seconds, capped at MAX_LONG_POLL_S) and ``after`` (``what``) query values."""
    try:
        wait_s = min(float(request.query.get("wait", "0")), MAX_LONG_POLL_S)
        after = int(request.query.get("after", "0"))
        if math.isnan(wait_s):
            # NaN passes every bound and would make the wait endless.
            raise ValueError("wait is NaN")
    except ValueError as exc:
        raise HubError(f"query 'wait' must be seconds and 'after' {what}", status=400) from exc
    return max(wait_s, 0.0), after
