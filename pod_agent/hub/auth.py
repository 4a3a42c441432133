"""Request authentication of the hub: the aiohttp middleware every route runs behind (``errors_and_auth``), and
what it leaves on the request for the handlers (the signer's key id, the records storage holds for it, the body).

Every ``/v1`` request carries an Ed25519 request signature (``pod_agent.protocol.sign_request``) checked against
the registered key of a pod or modeller, within the clock window and not replayed; registration requests are
signed by the key they register. Authentication runs before any body is read, cheapest first: the headers
(present, well formed, timestamp within -300/+30 s), the key's request rate (``limits.RateLimiter``, looked at
but not spent), the key (registered; for the two registration routes an unknown key may offer itself in the
body); only then is the body read, streaming, hashed as it comes and refused with 413 past its route's cap
(``limits.body_cap``); then the signature, the replay cache (per-key quotas, ``protocol.RequestReplayCache``), the
nonce claimed in storage (``Storage.claim_nonces``: it outlives the process, and every process of the hub shares
it), the rate spent, and a key awaiting approval is refused everything but registration (``admission.py``).
The middleware also turns the hub's errors into ``{"error": text}`` answers with their status.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from pod_agent.errors import HubError, ProtocolError
from pod_agent.hub.admission import approval_hint
from pod_agent.hub.hubstate import HubState, hub_of
from pod_agent.hub.limits import RateLimited, TooLarge, body_cap
from pod_agent.hub.status import STATUS_ROUTE
from pod_agent.hub.storage import ModellerRecord, PodRecord
from pod_agent.protocol import PublicKey, SignedHeaders, check_signature, parse_signed_headers, sha256_hex

# Body read size: small enough that a cap is enforced within one chunk of it.
_BODY_CHUNK_BYTES = 64 * 1024
# Registrations by keys the hub does not know yet share one bucket: their key ids cost nothing to make.
_UNREGISTERED = "(unregistered keys)"
_REGISTER_ROUTES = frozenset({"pods_register", "modellers_register"})
# The status page checks the operator's admin token itself (hub.status).
_UNSIGNED_ROUTES = frozenset({"healthz", STATUS_ROUTE})
_STREAMED_BODY_ROUTES = frozenset({"blob_put"})
_EMPTY_SHA256 = sha256_hex(b"")

# What authentication leaves on the request for the handlers: the signer's key id, the body it read (whose sha256
# the signature covers), and the records storage holds for the key, so handlers need not query them again.
SIGNER: web.RequestKey[str] = web.RequestKey("signer", str)
BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)
SIGNER_POD: web.RequestKey[PodRecord | None] = web.RequestKey("signer_pod")
SIGNER_MODELLER: web.RequestKey[ModellerRecord | None] = web.RequestKey("signer_modeller")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_and_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    route = request.match_info.route.name
    try:
        if route not in _UNSIGNED_ROUTES and request.match_info.http_exception is None:
            await _authenticate(request, route)
        return await handler(request)
    except RateLimited as exc:
        response = _error(429, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except HubError as exc:
        return _error(exc.status or 400, str(exc))
    except ProtocolError as exc:
        return _error(401, f"request signature rejected: {exc}")


@dataclass(frozen=True)
class _Known:
    """What the hub holds for a request's key id, looked up before its body is read."""

    pod: PodRecord | None
    modeller: ModellerRecord | None
    pending: bool
    public_key: PublicKey | None


async def _known(hub: HubState, key_id: str) -> _Known:
    standing = await hub.signers.get(key_id)
    record = standing.pod or standing.modeller
    # Kept parsed (decoded, loaded, its id hashed) from one request to the next; the standing is read each time.
    public_key = None if record is None else hub.parsed_key(record.public_key)
    return _Known(standing.pod, standing.modeller, standing.pending, public_key)


async def _authenticate(request: web.Request, route: str | None) -> None:
    """Authenticate before and while reading the body, cheapest check first (see the module docstring)."""
    hub = hub_of(request)
    now = hub.now()
    signed = parse_signed_headers(request.headers, now=now)
    hub.rates.check(signed.key_id, now=time.monotonic())
    known = await _known(hub, signed.key_id)
    registering = route in _REGISTER_ROUTES
    if known.public_key is None:
        if not registering:
            raise ProtocolError(f"key {signed.key_id[:16]} is not registered with the hub: register it first")
        hub.rates.check(_UNREGISTERED, now=time.monotonic())
    if route in _STREAMED_BODY_ROUTES or not request.body_exists:
        # The signature covers an empty body: a streamed upload's (the sha256 in its path binds the content), or
        # a request with none to read (a GET, a pod's task socket).
        body, digest = b"", _EMPTY_SHA256
    else:
        body, digest = await _read_capped(request, body_cap(route, request.match_info.get("stage")), route)
    if digest != signed.body_sha256:
        raise ProtocolError("request body does not match its signed sha256: resend the request unmodified")
    # Registration is signed by the key being registered: proof of possession, not of identity.
    public_key = known.public_key or _offered_key(body, signed)
    check_signature(signed, method=request.method, path=request.raw_path, public_key=public_key)
    hub.replay.check_and_add(signed.key_id, signed.nonce, timestamp=signed.timestamp, now=now)
    if not await hub.claim_nonce(signed, now=now):
        raise ProtocolError(
            f"request nonce {signed.nonce} from key {signed.key_id[:16]} was already used: re-sign the request"
        )
    hub.rates.take(signed.key_id, now=time.monotonic())
    if known.public_key is None:
        hub.rates.take(_UNREGISTERED, now=time.monotonic())
    if known.pending and not registering:
        raise HubError(f"{approval_hint(signed.key_id)}; until then the hub refuses this key", status=403)
    request[SIGNER] = signed.key_id
    request[SIGNER_POD] = known.pod
    request[SIGNER_MODELLER] = known.modeller
    request[BODY] = body


async def _read_capped(request: web.Request, cap: int, route: str | None) -> tuple[bytes, str]:
    """The body and its sha256, read in chunks and hashed as they come; TooLarge past ``cap`` bytes."""
    what = f"{request.method} {request.path}"
    declared = request.content_length
    if declared is not None and declared > cap:
        raise TooLarge(f"{what} body of {declared} bytes is over this route's cap of {cap} bytes")
    if request.content.at_eof():
        # Nothing left to receive: the body was empty, or a middleware in front of the hub's own (a
        # proxy's, a test's traffic capture) read it already; aiohttp keeps that copy for read().
        whole = await request.read()
        if len(whole) > cap:
            raise TooLarge(f"{what} body is over this route's cap of {cap} bytes")
        return whole, sha256_hex(whole)
    body = bytearray()
    digest = hashlib.sha256()
    async for chunk in request.content.iter_chunked(_BODY_CHUNK_BYTES):
        if len(body) + len(chunk) > cap:
            raise TooLarge(f"{what} body is over this route's cap of {cap} bytes")
        body += chunk
        digest.update(chunk)
    return bytes(body), digest.hexdigest()


def _offered_key(body: bytes, signed: SignedHeaders) -> PublicKey:
    """The key a registration offers, if it is the key that signed the request."""
    try:
        raw = json.loads(body)
        offered = PublicKey.from_b64(str(raw["public_key"]))
    except (ValueError, KeyError, TypeError, ProtocolError):
        offered = None
    if offered is None or offered.key_id != signed.key_id:
        raise ProtocolError(f"key {signed.key_id[:16]} is not registered with the hub: register it first")
    return offered


def body_of(request: web.Request) -> bytes:
    return request[BODY]


def signer_pod(request: web.Request) -> PodRecord:
    pod = request[SIGNER_POD]
    if pod is None:
        raise HubError("this key is not a registered pod; register first (POST /v1/pods/register)", status=403)
    return pod


async def modeller_of(request: web.Request) -> ModellerRecord | None:
    """The signer's modeller record, if its key is a registered modeller's."""
    modeller = request[SIGNER_MODELLER]
    if modeller is None and request[SIGNER_POD] is not None:
        # Authentication stops at the pod, but nothing keeps one key from being a pod's and a modeller's.
        hub = hub_of(request)
        modeller = await hub.db(hub.storage.get_modeller, request[SIGNER])
    return modeller


async def signer_modeller(request: web.Request) -> ModellerRecord:
    modeller = await modeller_of(request)
    if modeller is None:
        raise HubError("this key is not a registered modeller; run `pod-agent modeller register`", status=403)
    return modeller
