"""HTTP API of the reference hub: routes, request authentication, task push.

Owns the aiohttp application built by ``create_app(storage)``: every ``/v1``
request carries an Ed25519 request signature (``pod_agent.protocol.sign_request``)
checked against the registered key of a pod or modeller, within the clock window
and not replayed; registration requests are signed by the key they register.

Authentication runs before any body is read, cheapest first: the headers (present, well
formed, timestamp within -300/+30 s), the key's request rate (``limits.RateLimiter``,
looked at but not spent), the key (registered; for the two registration routes an unknown
key may offer itself in the body); only then is the body read, streaming, hashed as it
comes and refused with 413 past its route's cap (``limits.body_cap``); then the signature,
the replay cache (per-key quotas, ``protocol.RequestReplayCache``), the nonce claimed in storage
(``Storage.claim_nonces``: it outlives the process, and every process of the hub shares it), the
rate spent, and a key awaiting approval is refused everything but registration (``admission.py``).

Blobs record who uploaded them and what references them (a task's weights, a pod's result
or masked input, a model). A blob is served to its uploaders, to the modeller of a task
whose result or masked input names it (sent by a pod that uploaded it), and to the pods
targeted by a task that pins it as weights and whose modeller uploaded it; each key's
uploads are held to a byte and count quota, and blobs nothing references are collected
after a grace period by a background task. A model's source is served to its publisher,
to pods a task of the publisher targets, and to anyone if published ``public``.
Tasks reach pods over a WebSocket per pod (push) or a long poll, at least once:
a task stays pending until the pod acknowledges it, and every new connection
gets all pending tasks again. Results are idempotent by (task, pod). Blobs
stream to disk through ``blobs.Blobs`` (a directory, ``BlobStore``). The hub is not trusted by pods: it
checks signatures to keep its own records clean, but the pod's policy decides.

Routes (JSON bodies; errors are ``{"error": text}`` with a 4xx/5xx status):

    GET  /healthz                           liveness, no auth
    POST /v1/pods/register                  pod registers or updates itself
    POST /v1/pod/heartbeat                  pod is alive (long-poll mode)
    GET  /v1/pod/ws                         WebSocket: tasks pushed, acks and heartbeats back
    GET  /v1/pod/ws?standby=1               a pod's standby WebSocket: heartbeats only until it sends
                                            "promote" (its socket at another process ended), then as above
    GET  /v1/pod/tasks?wait=S               long poll: pending tasks
    POST /v1/pod/tasks/{task_id}/ack        pod has recorded the task
    POST /v1/pod/tasks/{task_id}/refusal    pod refused: {"code": ...}
    POST /v1/pod/tasks/{task_id}/progress   a ProgressEvent
    POST /v1/pod/results                    a pod-signed ResultPayload envelope (idempotent)
    POST /v1/modellers/register             modeller registers its key
    GET  /v1/pods                           pods with public schema and status
    POST /v1/models                         publish a model version
    GET  /v1/models/{name}/{version}        fetch a model version (publisher, targeted pods, or public)
    POST /v1/tasks                          submit a modeller-signed TaskPayload envelope and its cohort
                                            entries (each pod is pushed its own entry and proof: fanout.py)
    GET  /v1/tasks/{task_id}                per-pod delivery, refusal, progress and result status
    GET  /v1/tasks/{task_id}/results        the pods' signed result envelopes
    GET  /v1/tasks/{task_id}/wait?after=N&wait=S  long poll: the status once more than N pods finished
    PUT  /v1/blobs/{sha256}                 stream a blob (signature over an empty body; sha256 binds it)
    GET  /v1/blobs/{sha256}                 stream a blob back (to those it is shared with, else 404)
    POST /v1/secagg/{task_id}/{round}/{stage}    one signed secure-round message (protocol.secure_round)
    GET  /v1/secagg/{task_id}/{round}/{stage}?wait=S&after=N
                                            long poll: the stage's messages once more than N are held

Secure rounds: only the task's modeller and its target pods may post or read a round's
messages; each sender posts its own stage (pods theirs, the modeller roster, committed
and survivors), signed by the key the request is signed with, naming the URL's task and
round; one message per (sender, stage), a different second one is 409; the modeller's are
one per pod (addressed, ``to``). A pod reads only what is its own: the modeller's messages
addressed to it, the ciphertexts addressed to it in ``shares``, and the consistency
signatures whose lists name it, so what it receives grows with its neighbourhood, not the cohort.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import WSMsgType, web
from pydantic import BaseModel, TypeAdapter, ValidationError

from pod_agent.errors import HubError, ProtocolError
from pod_agent.hub.admission import (
    Admission,
    RegistrationPolicy,
    admit,
    approval_hint,
)
from pod_agent.hub.batching import GatheredClaims, GatheredReads, GatheredWrites, StorageBatcher
from pod_agent.hub.blobs import Blobs, BlobStore
from pod_agent.hub.cluster import Cluster, SingleProcess
from pod_agent.hub.fanout import (
    ANNOUNCE_FROM_PODS,
    Fanout,
    Link,
    PreparedTask,
    collector_paused,
    fanout_key,
    fanout_task,
    prepare,
    tree_from_registrations,
)
from pod_agent.hub.limits import (
    MAX_SMALL_BODY_BYTES,
    HubLimits,
    RateLimited,
    RateLimiter,
    TooLarge,
    body_cap,
)
from pod_agent.hub.status import STATUS_ROUTE, StatusPage, StatusSource, add_status_route
from pod_agent.hub.storage import (
    STRANGER,
    BlobRecord,
    BlobRefRecord,
    DeliveryRecord,
    HubTaskRecord,
    KeyRole,
    ModellerRecord,
    ModelRecord,
    NonceClaim,
    PodRecord,
    RoundMessageRecord,
    Storage,
)
from pod_agent.protocol import (
    MAX_LISTED_ROTATIONS,
    MAX_REQUEST_SKEW_S,
    MAX_STAGE_BYTES,
    MODELLER_SENDER,
    MODELLER_STAGES,
    POD_READ_STAGES,
    STAGE_MODELS,
    STAGES,
    AddressedMessage,
    CohortEntry,
    ConsistencySignature,
    EncryptedShares,
    Envelope,
    MaskedInput,
    ModellerRegistration,
    ModelPublication,
    PodRegistration,
    ProgressEvent,
    PublicKey,
    Refusal,
    RequestReplayCache,
    ResultPayload,
    SignedHeaders,
    Stage,
    TaskPayload,
    TaskSubmission,
    addressed_sender,
    check_signature,
    cohort_tree,
    envelope_bytes,
    first_error,
    open_envelope,
    parse_envelope,
    parse_signed_headers,
    sha256_hex,
    source_sha256,
    verified_rotation,
)

_log = logging.getLogger(__name__)
_T = TypeVar("_T", bound=BaseModel)
_R = TypeVar("_R")

# Bodies are read by ``_read_capped`` with each route's cap (limits.body_cap), never by aiohttp's
# request.read(); this only bounds a handler that would call it by mistake.
MAX_JSON_BODY_BYTES = 8 * 1024 * 1024
# Body read size: small enough that a cap is enforced within one chunk of it.
_BODY_CHUNK_BYTES = 64 * 1024
# Registrations by keys the hub does not know yet share one bucket: their key ids cost nothing to make.
_UNREGISTERED = "(unregistered keys)"
# A long poll returns at least this often so proxies and the pod notice a dead peer.
MAX_LONG_POLL_S = 30.0
# A pod not heard from within this many heartbeat intervals is shown offline.
OFFLINE_AFTER_HEARTBEATS = 3
# Cohort entries of a submission validated per pass of the event loop (about 2.5 ms CPU): ``_parse_submission``.
SUBMISSION_SLICE = 1000
_COHORT_SLICE: TypeAdapter[list[CohortEntry]] = TypeAdapter(list[CohortEntry])
_REGISTER_ROUTES = frozenset({"pods_register", "modellers_register"})
# The status page checks the operator's admin token itself (hub.status).
_UNSIGNED_ROUTES = frozenset({"healthz", STATUS_ROUTE})
_STREAMED_BODY_ROUTES = frozenset({"blob_put"})
_EMPTY_SHA256 = sha256_hex(b"")
# Signers' keys kept parsed (by their base64 text, so a re-keyed pod's new key is parsed anew): a fleet's every
# handshake had decoded, loaded and hashed its key again. Forgotten all at once past this many.
_PARSED_KEYS = 65_536
# How often (in claims) a process forgets nonces past the clock window: requests that old are refused anyway.
_NONCE_PRUNE_EVERY = 1000

_HUB: web.AppKey[_Hub] = web.AppKey("hub", object)  # type: ignore[arg-type]
_SIGNER: web.RequestKey[str] = web.RequestKey("signer", str)
_BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)
# The records authentication found for the signer's key, so handlers need not query them again.
_SIGNER_POD: web.RequestKey[PodRecord | None] = web.RequestKey("signer_pod")
_SIGNER_MODELLER: web.RequestKey[ModellerRecord | None] = web.RequestKey("signer_modeller")


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise HubError(f"bad request body: {first_error(exc, root='body')}", status=400) from exc


async def _parse_submission(raw: bytes) -> TaskSubmission:
    """``_parse(TaskSubmission, raw)`` with a large cohort's entries validated SUBMISSION_SLICE at a time, the
    event loop served in between: 10,000 entries at once held it 20-30 ms CPU (90-110 ms on a busy host), the
    longest wait of a heartbeat's answer in a fan-out. The envelope is validated from JSON, as the whole would
    be; the entries, strings only, from what ``json.loads`` made of them (no more lenient: a string that JSON
    mode refuses, such as a lone surrogate, is refused as a Python string too). On any error the body is parsed
    whole again, so that the error is named as for any body."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    cohort = data.get("cohort") if isinstance(data, dict) else None
    if not isinstance(cohort, list) or len(cohort) <= SUBMISSION_SLICE:
        return _parse(TaskSubmission, raw)  # type: ignore[no-any-return]
    try:
        head = TaskSubmission.model_validate_json(json.dumps({**data, "cohort": cohort[:SUBMISSION_SLICE]}))
        entries = list(head.cohort)
        for start in range(SUBMISSION_SLICE, len(cohort), SUBMISSION_SLICE):
            await asyncio.sleep(0)
            entries += _COHORT_SLICE.validate_python(cohort[start:start + SUBMISSION_SLICE])
        return TaskSubmission.model_validate({"envelope": head.envelope, "cohort": entries})
    except ValidationError:
        return _parse(TaskSubmission, raw)  # type: ignore[no-any-return]


class _Hub:
    """Per-app state: storage, blobs, replay cache, and who is waiting for which pod's tasks."""

    def __init__(
        self,
        storage: Storage,
        blobs: Blobs,
        clock: Callable[[], float],
        *,
        registration: RegistrationPolicy,
        limits: HubLimits,
        cluster: Cluster,
    ) -> None:
        self.storage = storage
        self.cluster = cluster
        self.blobs = blobs
        self.clock = clock
        self.registration: RegistrationPolicy = registration
        self.limits = limits
        # The cache refuses a replay this process saw without a database write; storage's claim is the record
        # that outlives the process and that every process shares.
        self.replay = RequestReplayCache(
            max_entries=limits.replay_entries, max_entries_per_key=limits.replay_entries_per_key
        )
        self.rates = RateLimiter(rate_per_s=limits.rate_per_s, burst=limits.rate_burst)
        self._wakeups: dict[str, asyncio.Event] = {}
        self.fanout = Fanout()
        self.batcher = StorageBatcher()
        self.writes = GatheredWrites(storage, self.db_batched)
        self.reads: GatheredReads[str, list[str]] = GatheredReads(
            storage.pending_task_ids, self.db_batched, absent=list, name="hub-pending-reads"
        )
        # Every signed request's signer; a fleet reconnecting to this process at once is looked up together.
        self.signers = GatheredReads(
            storage.key_standings, self.db_batched, absent=lambda: STRANGER, name="hub-signer-reads"
        )
        # A reconnecting fleet's handshakes claim their nonces together: one statement per batch, not per request.
        self._nonces = GatheredClaims(storage.claim_nonces, self.db_batched, name="hub-nonce-claims")
        self._claimed = 0
        # A task prepared again from storage (``_prepared``): once, however many pods ask for it at once.
        self.preparing: dict[str, asyncio.Future[PreparedTask | None]] = {}
        self.background: set[asyncio.Task[None]] = set()  # fan-outs another hub process asked for
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._keys: dict[str, PublicKey] = {}

    def now(self) -> int:
        return int(self.clock())

    def parsed_key(self, b64: str) -> PublicKey:
        key = self._keys.get(b64)
        if key is None:
            if len(self._keys) >= _PARSED_KEYS:
                self._keys.clear()
            key = self._keys[b64] = PublicKey.from_b64(b64)
        return key

    async def claim_nonce(self, signed: SignedHeaders, *, now: int) -> bool:
        """Whether no request with this key and nonce was seen before, by any process of the hub, before any
        restart (recording it)."""
        self._claimed += 1
        if self._claimed % _NONCE_PRUNE_EVERY == 0:
            await self.db(self.storage.prune_nonces, stamped_before=now - 2 * MAX_REQUEST_SKEW_S)
        return await self._nonces.get(NonceClaim(signed.key_id, signed.nonce, signed.timestamp))

    def wakeup(self, pod: str) -> asyncio.Event:
        return self._wakeups.setdefault(pod, asyncio.Event())

    def notify(self, pod: str) -> None:
        """Wake the waiters on ``pod`` (a pod name or a wake-up key) here and in the other hub processes."""
        self.wake_local(pod)
        self.cluster.publish(pod)

    def wake_local(self, key: str) -> None:
        event = self._wakeups.pop(key, None)
        if event is not None:
            event.set()

    def wake_all_local(self) -> None:
        for key in list(self._wakeups):
            self.wake_local(key)

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def db_batched(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """As ``db``, for the calls every pod connection makes (touch, ack, pending): run in batches, one after
        another, where storage is in this process; a database server (shared) takes them in parallel instead,
        each call a round trip that a batch would only queue behind the others."""
        if self.cluster.shared:
            return await self.db(fn, *args, **kwargs)
        return await self.batcher.call(fn, *args, **kwargs)


def _hub(request: web.Request) -> _Hub:
    return request.app[_HUB]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors_and_auth(
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


async def _known(hub: _Hub, key_id: str) -> _Known:
    standing = await hub.signers.get(key_id)
    record = standing.pod or standing.modeller
    # Kept parsed (decoded, loaded, its id hashed) from one request to the next; the standing is read each time.
    public_key = None if record is None else hub.parsed_key(record.public_key)
    return _Known(standing.pod, standing.modeller, standing.pending, public_key)


async def _authenticate(request: web.Request, route: str | None) -> None:
    """Authenticate before and while reading the body, cheapest check first (see the module docstring)."""
    hub = _hub(request)
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
    request[_SIGNER] = signed.key_id
    request[_SIGNER_POD] = known.pod
    request[_SIGNER_MODELLER] = known.modeller
    request[_BODY] = body


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


def _body(request: web.Request) -> bytes:
    return request[_BODY]


def _signer_pod(request: web.Request) -> PodRecord:
    pod = request[_SIGNER_POD]
    if pod is None:
        raise HubError("this key is not a registered pod; register first (POST /v1/pods/register)", status=403)
    return pod


async def _modeller_of(request: web.Request) -> ModellerRecord | None:
    """The signer's modeller record, if its key is a registered modeller's."""
    modeller = request[_SIGNER_MODELLER]
    if modeller is None and request[_SIGNER_POD] is not None:
        # Authentication stops at the pod, but nothing keeps one key from being a pod's and a modeller's.
        hub = _hub(request)
        modeller = await hub.db(hub.storage.get_modeller, request[_SIGNER])
    return modeller


async def _signer_modeller(request: web.Request) -> ModellerRecord:
    modeller = await _modeller_of(request)
    if modeller is None:
        raise HubError("this key is not a registered modeller; run `pod-agent modeller register`", status=403)
    return modeller


# -- pods -------------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _pods_register(request: web.Request) -> web.Response:
    hub = _hub(request)
    reg: PodRegistration = _parse(PodRegistration, _body(request))
    key = PublicKey.from_b64(reg.public_key)
    if key.key_id != request[_SIGNER]:
        raise HubError("registration must be signed by the key it registers", status=403)
    admission = await _admission(request, role="pod", name=reg.name, token=reg.enrolment_token)
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


async def _admission(request: web.Request, *, role: KeyRole, name: str, token: str | None) -> Admission:
    """The registration policy's word on the signer registering as ``role``; raises RegistrationRefused."""
    hub = _hub(request)
    known = (request[_SIGNER_POD] if role == "pod" else request[_SIGNER_MODELLER]) is not None
    admission: Admission = await hub.db(
        admit, hub.storage, hub.registration, role=role, key_id=request[_SIGNER], name=name, known=known,
        token=token, now=hub.now(),
    )
    return admission


async def _store_registration(hub: _Hub, admission: Admission, store: Callable[[_R], None], record: _R) -> None:
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


def _opened(raw: bytes | dict[str, Any], model: type[_T], key: PublicKey, *, what: str) -> tuple[Envelope, _T]:
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


async def _pod_heartbeat(request: web.Request) -> web.Response:
    hub = _hub(request)
    pod = _signer_pod(request)
    await hub.db(hub.storage.touch_pod, pod.name, now=hub.now())
    return web.json_response({"ok": True, "now": hub.now()})


async def _prepared(hub: _Hub, task_id: str) -> PreparedTask | None:
    """The task as the push path sends it (None: no such task): kept since its submission, else read and
    prepared again from storage, once however many pods ask for it together (thousands, woken by another hub
    process's fan-out, or moving here from a process that died before it told this one of the task)."""
    prepared = hub.fanout.get(task_id)
    if prepared is not None:
        return prepared
    pending = hub.preparing.get(task_id)
    if pending is None:
        pending = hub.preparing[task_id] = asyncio.ensure_future(_prepare_again(hub, task_id))
        pending.add_done_callback(lambda _: hub.preparing.pop(task_id, None))
    return await asyncio.shield(pending)  # one pod's disconnecting does not cancel the others' preparation


async def _prepare_again(hub: _Hub, task_id: str) -> PreparedTask | None:
    # Its record lists its whole cohort: read once here, not once per pod that asks (``_pending``).
    task = await hub.db(hub.storage.get_task, task_id)
    if task is None:
        return None
    registrations = await hub.db(hub.storage.cohort_registrations, task.task_id)
    # In a thread, as at submission: the cohort's hashing would hold heartbeats waiting.
    tree = await asyncio.to_thread(tree_from_registrations, task, registrations)
    return hub.fanout.keep(prepare(task, tree))


async def _pending(hub: _Hub, pod: str, *, sent: Collection[str] = ()) -> list[PreparedTask]:
    """What ``pod`` has not acknowledged yet, read from storage (on connecting, when woken from elsewhere, and
    every MAX_LONG_POLL_S), less what was ``sent`` on its connection. The ids only: a task is read whole only
    when not prepared here, since its record lists its whole cohort (10,000 pods re-reading a 10,000-name list
    each had taken the hub from 300 MB to 1 GB)."""
    out = []
    for task_id in await hub.reads.get(pod):
        if task_id in sent:
            continue
        try:
            prepared = await _prepared(hub, task_id)
        except HubError as exc:
            _log.warning("task not deliverable: %s", exc, extra={"pod": pod})
            continue
        if prepared is not None:
            out.append(prepared)
    return out


async def _pod_tasks(request: web.Request) -> web.Response:
    """Long poll: answer at once when tasks are pending, else when one arrives or the wait ends."""
    hub = _hub(request)
    pod = _signer_pod(request)
    try:
        wait_s = min(float(request.query.get("wait", "0")), MAX_LONG_POLL_S)
    except ValueError as exc:
        raise HubError("query 'wait' must be a number of seconds", status=400) from exc
    await hub.db(hub.storage.touch_pod, pod.name, now=hub.now())
    event = hub.wakeup(pod.name)
    tasks = await _pending(hub, pod.name)
    if not tasks and wait_s > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wait_s)
        tasks = await _pending(hub, pod.name)
    body = '{"tasks": [' + ", ".join(t.delivery(pod.name) for t in tasks) + "]}"
    return web.Response(text=body, content_type="application/json")


async def _pod_ws(request: web.Request) -> web.WebSocketResponse:
    """Push pending tasks; read acks and heartbeats. Every connection starts by resending all pending.

    A standby socket (``?standby=1``, inside the signed path) is one a pod holds open at this process while
    its tasks come on a socket at another: nothing is pushed on it and its heartbeats are answered without
    being recorded, until the pod sends ``promote`` because that other socket ended (its process died). Then
    it is served as a socket opened now, without the signed handshake that thousands of pods moving at once
    would each cost this process (~0.4 ms of CPU apiece)."""
    hub = _hub(request)
    pod = _signer_pod(request)
    # A pod sends heartbeats and acks on its socket, nothing larger. No permessage-deflate: the zlib state
    # each connection allocates on its first push took the hub to 302 MB in a fan-out to 4000 pods (187 MB
    # without), and a signed task of hex hashes compresses little.
    ws = web.WebSocketResponse(max_msg_size=MAX_SMALL_BODY_BYTES, compress=False)
    await ws.prepare(request)
    hub.sockets.add(ws)
    link = Link(pod.name, ws, request.transport, standby=request.query.get("standby") == "1")
    pusher = None if link.standby else _serve_link(hub, link)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            if await _on_pod_message(hub, link, msg.data) and pusher is None:
                if not await _still_registered(hub, request[_SIGNER], pod.name):
                    await ws.close(message=b"this key is no longer the pod's registered key: register again")
                    break
                link.standby = False
                pusher = _serve_link(hub, link)
    finally:
        if pusher is not None:
            pusher.cancel()
            # The pod may vanish mid-send; its tasks stay pending and go out again on its next connection.
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pusher
            hub.fanout.disconnect(link)
    return ws


def _serve_link(hub: _Hub, link: Link) -> asyncio.Task[None]:
    """``link`` is one of its pod's task sockets from now: pushed to, and its pending tasks sent."""
    hub.fanout.connect(link)
    hub.writes.touch(link.pod, hub.now())  # written with the heartbeats: no thread hop per connecting pod
    return asyncio.create_task(_push_loop(hub, link), name=f"push:{link.pod}")


async def _still_registered(hub: _Hub, key_id: str, pod: str) -> bool:
    """Whether ``key_id`` is still ``pod``'s registered key and not held for approval, as ``_authenticate``
    requires of every request (a standby socket may have been opened hours before its promotion, and the pod
    released, its key rotated or held for approval since)."""
    standing = await hub.signers.get(key_id)
    return standing.pod is not None and standing.pod.name == pod and not standing.pending


async def _push_loop(hub: _Hub, link: Link) -> None:
    """Send each pending task once per connection: what storage holds on connecting (and after a wake-up
    from another process, or a quiet MAX_LONG_POLL_S), else what a fan-out announced (the socket was busy
    when it pushed), already encoded (``fanout.py``), without reading the task back."""
    announced: list[PreparedTask] | None = None
    while not link.ws.closed:
        event = hub.wakeup(link.pod)
        for task in await _pending(hub, link.pod, sent=link.sent) if announced is None else announced:
            await link.send(task)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MAX_LONG_POLL_S):
                await event.wait()
        announced = hub.fanout.take(link.pod)


async def _on_pod_message(hub: _Hub, link: Link, data: str) -> bool:
    """A heartbeat is answered at once; its touch, and an ack, are gathered and written in the background
    (``batching.GatheredWrites``), so the pod's next message is read while a fan-out's acks are written.
    The socket's handshake was signed by the pod's key: what comes on it is the pod's word. An ack counts
    only for a task pushed on this connection (any other is no delivery of this pod's, or one the hub
    delivers again), so what a pod sends cannot make the hub write more than its tasks. A standby socket's
    heartbeats are not recorded: the pod's other socket's are. Whether the pod asked to promote the socket."""
    try:
        msg = json.loads(data)
        kind = msg["type"]
    except (ValueError, KeyError, TypeError):
        await link.ws.close(message=b"malformed message")
        return False
    now = hub.now()
    if kind == "heartbeat":
        await link.ws.send_str(f'{{"type": "heartbeat_ack", "now": {now}}}')
        if not link.standby:
            hub.writes.touch(link.pod, now)
    elif kind == "ack" and isinstance(task_id := msg.get("task_id"), str) and task_id in link.sent:
        hub.writes.ack(task_id, link.pod, now)
    return bool(kind == "promote")


def _no_task_for(task_id: str, pod: str) -> HubError:
    return HubError(f"no task {task_id} for pod {pod!r}", status=404)


async def _pod_task_ack(request: web.Request) -> web.Response:
    hub = _hub(request)
    pod = _signer_pod(request)
    found = await hub.db(hub.storage.ack_delivery, request.match_info["task_id"], pod.name, now=hub.now())
    if not found:
        raise _no_task_for(request.match_info["task_id"], pod.name)
    return web.json_response({"ok": True})


async def _pod_task_refusal(request: web.Request) -> web.Response:
    hub = _hub(request)
    pod = _signer_pod(request)
    refusal: Refusal = _parse(Refusal, _body(request))
    task_id = request.match_info["task_id"]
    if not await hub.db(hub.storage.record_refusal, task_id, pod.name, refusal.code, now=hub.now()):
        raise _no_task_for(task_id, pod.name)
    hub.notify(_task_wakeup_key(task_id))
    _log.info("task refused by pod", extra={"pod": pod.name, "code": refusal.code})
    return web.json_response({"ok": True})


async def _pod_task_progress(request: web.Request) -> web.Response:
    hub = _hub(request)
    pod = _signer_pod(request)
    event: ProgressEvent = _parse(ProgressEvent, _body(request))
    task_id = request.match_info["task_id"]
    if event.task_id != task_id:
        raise HubError("progress event names another task than the URL", status=400)
    if not await hub.db(hub.storage.record_progress, task_id, pod.name, event.model_dump(mode="json")):
        raise _no_task_for(task_id, pod.name)
    return web.json_response({"ok": True})


async def _pod_results(request: web.Request) -> web.Response:
    """Store a signed result once; the same bytes again are acknowledged, different ones are 409."""
    hub = _hub(request)
    pod = _signer_pod(request)
    envelope, result = _opened(_body(request), ResultPayload, PublicKey.from_b64(pod.public_key), what="result")
    if result.pod != pod.name:
        raise HubError(f"result names pod {result.pod!r} but was uploaded by {pod.name!r}", status=403)
    task = await hub.db(hub.storage.get_task, result.task_id)
    if task is None or pod.name not in task.pods:
        raise _no_task_for(result.task_id, pod.name)
    if result.blob is not None:
        blob = await hub.db(hub.storage.get_blob, result.blob.sha256)
        owned = await hub.db(hub.storage.blob_owned_by, result.blob.sha256, pod.key_id)
        if blob is None or blob.size_bytes != result.blob.size_bytes or not owned:
            raise HubError(
                f"result blob {result.blob.sha256[:12]}... not uploaded by this pod yet; PUT it first", status=424
            )
    outcome = await hub.db(
        hub.storage.put_result, result.task_id, pod.name, envelope_bytes(envelope),
        status=result.status, now=hub.now(),
    )
    if result.blob is not None:
        ref = BlobRefRecord(result.blob.sha256, "result", result.task_id, pod.name)
        await hub.db(hub.storage.add_blob_refs, [ref])
    hub.notify(_task_wakeup_key(result.task_id))
    _log.info("result %s", outcome, extra={"pod": pod.name, "status": result.status})
    return web.json_response({"ok": True, "outcome": outcome}, status=201 if outcome == "stored" else 200)


# -- modellers ------------------------------------------------------------------------------


async def _modellers_register(request: web.Request) -> web.Response:
    hub = _hub(request)
    reg: ModellerRegistration = _parse(ModellerRegistration, _body(request))
    key = PublicKey.from_b64(reg.public_key)
    if key.key_id != request[_SIGNER]:
        raise HubError("registration must be signed by the key it registers", status=403)
    admission = await _admission(request, role="modeller", name=reg.name, token=reg.enrolment_token)
    record = ModellerRecord(key.key_id, reg.public_key, reg.name, hub.now())
    await _store_registration(hub, admission, hub.storage.upsert_modeller, record)
    return _registered({"key_id": key.key_id}, admission, key.key_id)


async def _pods_list(request: web.Request) -> web.Response:
    hub = _hub(request)
    now = hub.now()
    pods = await _admitted_pods(hub)
    rotations = await hub.db(hub.storage.pod_rotations)
    return web.json_response(
        {
            "pods": [
                {
                    "name": p.name, "key_id": p.key_id, "public_key": p.public_key, "schema": p.schema,
                    "schema_hash": p.schema_hash, "row_count": p.row_count, "sandbox_level": p.sandbox_level,
                    "last_seen": p.last_seen, "online": _online(hub, p, now),
                    "rotations": [
                        json.loads(statement) for statement in rotations.get(p.name, [])[-MAX_LISTED_ROTATIONS:]
                    ],
                }
                for p in pods
            ]
        }
    )


def _online(hub: _Hub, pod: PodRecord, now: int) -> bool:
    """Connected now, or heard from within OFFLINE_AFTER_HEARTBEATS of its heartbeat intervals."""
    return hub.fanout.connected(pod.name) > 0 or now - pod.last_seen <= OFFLINE_AFTER_HEARTBEATS * pod.heartbeat_s


async def _admitted_pods(hub: _Hub) -> list[PodRecord]:
    """Registered pods less those awaiting approval (modellers neither see nor task them)."""
    pods: list[PodRecord] = await hub.db(hub.storage.list_pods)
    pending = {p.key_id for p in await hub.db(hub.storage.pending_keys)}
    return [p for p in pods if p.key_id not in pending]


async def _models_publish(request: web.Request) -> web.Response:
    hub = _hub(request)
    modeller = await _signer_modeller(request)
    pub: ModelPublication = _parse(ModelPublication, _body(request))
    if source_sha256(pub.source) != pub.sha256:
        raise HubError("model source does not hash to the given sha256", status=400)
    outcome = await hub.db(
        hub.storage.put_model,
        ModelRecord(
            name=pub.name, version=pub.version, style=pub.style, class_name=pub.class_name, source=pub.source,
            sha256=pub.sha256, weights_sha256=pub.weights_sha256, owner=modeller.key_id, created_at=hub.now(),
            public=pub.public,
        ),
    )
    if pub.weights_sha256 is not None:
        ref = BlobRefRecord(pub.weights_sha256, "model", f"{pub.name}@{pub.version}", modeller.key_id)
        await hub.db(hub.storage.add_blob_refs, [ref])
    return web.json_response({"outcome": outcome}, status=201 if outcome == "stored" else 200)


async def _models_get(request: web.Request) -> web.Response:
    hub = _hub(request)
    model = await hub.db(hub.storage.get_model, request.match_info["name"], request.match_info["version"])
    label = f"{request.match_info['name']}@{request.match_info['version']}"
    if model is None or not await _may_read_model(request, model):
        # One answer for absent and not shared, so a stranger learns nothing of what exists.
        raise HubError(
            f"no model {label} shared with this key: a model is served to its publisher and to the pods its "
            "tasks target, or to everyone if published with --public",
            status=404,
        )
    return web.json_response(
        {
            "name": model.name, "version": model.version, "style": model.style, "class_name": model.class_name,
            "source": model.source, "sha256": model.sha256, "weights_sha256": model.weights_sha256,
        }
    )


async def _may_read_model(request: web.Request, model: ModelRecord) -> bool:
    if model.public or model.owner == request[_SIGNER]:
        return True
    pod = request[_SIGNER_POD]
    if pod is None:
        return False
    hub = _hub(request)
    return bool(await hub.db(hub.storage.pod_targeted_by, pod.name, model.owner))


async def _tasks_submit(request: web.Request) -> web.Response:
    """Store a signed task with its cohort; prepare its push once and wake its pods (no automatic full
    collection meanwhile: ``fanout.collector_paused``)."""
    with collector_paused():
        return await _take_task(request)


async def _take_task(request: web.Request) -> web.Response:
    hub = _hub(request)
    modeller = await _signer_modeller(request)
    submission = await _parse_submission(_body(request))
    envelope, task = _opened(
        submission.envelope.model_dump(), TaskPayload, PublicKey.from_b64(modeller.public_key), what="task"
    )
    if task.modeller_id != modeller.key_id:
        raise HubError("task modeller_id differs from the signer's key id", status=400)
    # The cohort's hashing (in a thread: 75 ms at 10,000 pods, while the loop answers heartbeats) and the look-up
    # of its pods' admission (a round trip) need nothing of each other: they run at once, checked in this order.
    admission: Awaitable[set[str]] = hub.db(hub.storage.admitted, [entry.pod for entry in submission.cohort])
    hashed, admitted = await asyncio.gather(
        asyncio.to_thread(cohort_tree, submission.cohort), admission, return_exceptions=True
    )
    if isinstance(hashed, ProtocolError):
        raise HubError(f"task cohort: {hashed}", status=400) from hashed
    if isinstance(hashed, BaseException):
        raise hashed
    if isinstance(admitted, BaseException):
        raise admitted
    tree = hashed
    if tree.commitment != task.cohort:
        raise HubError(
            f"the {len(submission.cohort)} cohort entries do not give the task's signed cohort root "
            f"{task.cohort.root[:16]} (size {task.cohort.size}): send the entries the task was built from",
            status=400,
        )
    unknown = sorted(set(tree.pods) - admitted)
    if unknown:
        raise HubError(f"unknown pods {unknown[:20]}; list them with `pod-agent modeller pods`", status=404)
    record = HubTaskRecord(
        task_id=task.task_id, modeller_id=modeller.key_id,
        envelope=envelope_bytes(envelope), pods=tree.pods, created_at=hub.now(),
    )
    outcome = await hub.db(hub.storage.add_task, record)
    # SCAFFOLD's server control variate is pinned and served to the task's pods exactly like its weights.
    pinned = [ref for ref in (task.weights, task.scaffold.control if task.scaffold else None) if ref is not None]
    if pinned:
        await hub.db(hub.storage.add_blob_refs, [BlobRefRecord(ref.sha256, "weights", task.task_id) for ref in pinned])
    prepared = hub.fanout.publish(record, tree)
    if len(record.pods) >= ANNOUNCE_FROM_PODS:
        hub.cluster.publish(fanout_key(record.task_id))  # the other processes push it to their pods
        await hub.fanout.push(prepared, record.pods, wake=hub.wake_local)
    else:
        for pod in record.pods:
            hub.notify(pod)
    return web.json_response(
        {"task_id": task.task_id, "outcome": outcome}, status=201 if outcome == "stored" else 200
    )


async def _fan_out_from_elsewhere(hub: _Hub, task_id: str) -> None:
    """Another hub process took a large cohort's task: push it to the pods connected here."""
    try:
        with collector_paused():
            prepared = await _prepared(hub, task_id)
            if prepared is not None:
                await hub.fanout.push(prepared, prepared.tree.pods, wake=hub.wake_local)
    except Exception as exc:  # noqa: BLE001 - any backend's error; the pods read it on reconnecting
        _log.warning("cannot push task %s that another hub process took: %s", task_id, exc)


def _on_cluster_key(hub: _Hub, key: str) -> None:
    """A wake-up from another hub process: a large cohort's task to push here, or waiters to wake."""
    task_id = fanout_task(key)
    if task_id is None:
        hub.wake_local(key)
        return
    job = asyncio.create_task(_fan_out_from_elsewhere(hub, task_id), name=f"fanout:{task_id}")
    hub.background.add(job)
    job.add_done_callback(hub.background.discard)


async def _owned_task(request: web.Request) -> HubTaskRecord:
    hub = _hub(request)
    modeller = await _signer_modeller(request)
    task = await hub.db(hub.storage.get_task, request.match_info["task_id"])
    if task is None or task.modeller_id != modeller.key_id:
        raise HubError(f"no task {request.match_info['task_id']} submitted by this modeller", status=404)
    return task  # type: ignore[no-any-return]


def _status_body(task: HubTaskRecord, deliveries: list[DeliveryRecord]) -> dict[str, Any]:
    """A task's status as ``hub_api.TaskStatusReply`` (and ``TaskWaitReply``) carry it."""
    return {
        "task_id": task.task_id,
        "created_at": task.created_at,
        "pods": {
            d.pod: {
                "acked": d.acked_at is not None, "refusal": d.refusal, "result": d.result_status,
                "progress": d.progress,
            }
            for d in deliveries
        },
        "finished": sum(1 for d in deliveries if d.result_status is not None or d.refusal is not None),
    }


async def _tasks_status(request: web.Request) -> web.Response:
    hub = _hub(request)
    task = await _owned_task(request)
    return web.json_response(_status_body(task, await hub.db(hub.storage.deliveries, task.task_id)))


def _task_wakeup_key(task_id: str) -> str:
    # Shares the pods' wake-up table; a pod name cannot contain ':'.
    return f"task:{task_id}"


async def _tasks_wait(request: web.Request) -> web.Response:
    """Long poll for the task's modeller: its status once more than ``after`` of its pods have finished
    (a result or a refusal), or when the wait ends (at most MAX_LONG_POLL_S), so a modeller learns of a
    result when it is stored rather than at its next poll."""
    hub = _hub(request)
    task = await _owned_task(request)
    wait_s, after = _long_poll_query(request, what="a count of finished pods")
    deliveries = await _long_poll(
        hub, _task_wakeup_key(task.task_id), wait_s,
        fetch=lambda: hub.db(hub.storage.deliveries, task.task_id),
        ready=lambda ds: sum(1 for d in ds if d.result_status is not None or d.refusal is not None) > after,
    )
    return web.json_response(_status_body(task, deliveries))


def _long_poll_query(request: web.Request, *, what: str) -> tuple[float, int]:
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


async def _long_poll(
    hub: _Hub, key: str, wait_s: float, *, fetch: Callable[[], Awaitable[_R]], ready: Callable[[_R], bool]
) -> _R:
    """``fetch()`` once ``ready`` says so, or when ``wait_s`` has passed; woken by ``hub.notify(key)``."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        # Taken before the fetch, so a notify between the fetch and the wait is not lost.
        event = hub.wakeup(key)
        found = await fetch()
        remaining = deadline - asyncio.get_running_loop().time()
        if ready(found) or remaining <= 0:
            return found
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), remaining)


async def _tasks_results(request: web.Request) -> web.Response:
    hub = _hub(request)
    task = await _owned_task(request)
    results = await hub.db(hub.storage.results, task.task_id)
    return web.json_response({"results": [json.loads(r.envelope) for r in results]})


# -- secure rounds --------------------------------------------------------------------------


def _round_wakeup_key(task_id: str, round_index: int) -> str:
    # Shares the pods' wake-up table; a pod name cannot contain ':'.
    return f"secagg:{task_id}:{round_index}"


@dataclass(frozen=True)
class _RoundParty:
    """Who asks about which round: the task, the requester's sender label and key, the stage and round."""

    task: HubTaskRecord
    sender: str
    key: PublicKey
    stage: Stage
    round: int


async def _round_party(request: web.Request) -> _RoundParty:
    """The requester as a party to the URL's round; 404/403 for anyone but the task's modeller and target
    pods."""
    hub = _hub(request)
    stage = request.match_info["stage"]
    if stage not in STAGES:
        raise HubError(f"no secure-round stage {stage!r}; stages are {list(STAGES)}", status=404)
    task = await hub.db(hub.storage.get_task, request.match_info["task_id"])
    if task is None:
        raise HubError(f"no task {request.match_info['task_id']}", status=404)
    round_index = int(request.match_info["round"])
    pod = request[_SIGNER_POD]
    if pod is not None and pod.name in task.pods:
        return _RoundParty(task, pod.name, PublicKey.from_b64(pod.public_key), stage, round_index)
    modeller = await _modeller_of(request)
    if modeller is not None and modeller.key_id == task.modeller_id:
        return _RoundParty(task, MODELLER_SENDER, PublicKey.from_b64(modeller.public_key), stage, round_index)
    raise HubError(f"only task {task.task_id}'s modeller and target pods take part in its rounds", status=403)


async def _secagg_post(request: web.Request) -> web.Response:
    """Relay one signed round message: the sender's own stage, signed by its own key, naming this round."""
    hub = _hub(request)
    party = await _round_party(request)
    task, sender, stage, round_index = party.task, party.sender, party.stage, party.round
    raw = _body(request)
    if len(raw) > MAX_STAGE_BYTES[stage]:
        raise HubError(f"{stage} message is {len(raw)} bytes, over {MAX_STAGE_BYTES[stage]}", status=413)
    if (stage in MODELLER_STAGES) != (sender == MODELLER_SENDER):
        raise HubError(f"{sender!r} may not send the {stage} message of a round", status=403)
    envelope, message = _opened(raw, STAGE_MODELS[stage], party.key, what=stage)
    if message.task_id != task.task_id or message.round != round_index:
        raise HubError(f"{stage} message names task {message.task_id} round {message.round}, not the URL's", status=400)
    named = getattr(message, "pod", sender)  # only a pod's messages name their pod
    if named != sender:
        raise HubError(f"{stage} message names pod {named!r} but was sent by {sender!r}", status=403)
    if isinstance(message, AddressedMessage):
        # The modeller's messages are one per pod: stored under the addressee, relayed to it alone.
        if message.to not in task.pods:
            raise HubError(f"{stage} message is addressed to {message.to!r}, not a pod of this task", status=400)
        sender = addressed_sender(message.to)
    record = RoundMessageRecord(
        task_id=task.task_id, round=round_index, stage=stage, sender=sender, envelope=envelope_bytes(envelope),
        received_at=hub.now(),
    )
    outcome = await hub.db(hub.storage.put_round_message, record)
    if isinstance(message, MaskedInput):
        ref = BlobRefRecord(message.blob.sha256, "masked", task.task_id, sender)
        await hub.db(hub.storage.add_blob_refs, [ref])
    hub.notify(_round_wakeup_key(task.task_id, round_index))
    return web.json_response({"ok": True, "outcome": outcome}, status=201 if outcome == "stored" else 200)


async def _secagg_get(request: web.Request) -> web.Response:
    """Long poll: a stage's messages once more than ``after`` are held, or when the wait ends."""
    hub = _hub(request)
    party = await _round_party(request)
    task, reader, stage, round_index = party.task, party.sender, party.stage, party.round
    if reader != MODELLER_SENDER and stage not in POD_READ_STAGES:
        raise HubError(f"a pod does not read the {stage} messages of a round; only the modeller does", status=403)
    wait_s, after = _long_poll_query(request, what="a count of messages")

    async def fetch() -> list[RoundMessageRecord]:
        held: list[RoundMessageRecord] = await hub.db(hub.storage.round_messages, task.task_id, round_index, stage)
        return held if reader == MODELLER_SENDER else _records_for(reader, stage, held)

    records = await _long_poll(
        hub, _round_wakeup_key(task.task_id, round_index), wait_s, fetch=fetch, ready=lambda held: len(held) > after
    )
    if stage == "shares" and reader != MODELLER_SENDER:
        return web.json_response({"count": len(records), "shares": _shares_for(reader, records)})
    return web.json_response({"count": len(records), "messages": [json.loads(r.envelope) for r in records]})


def _records_for(reader: str, stage: Stage, records: list[RoundMessageRecord]) -> list[RoundMessageRecord]:
    """What pod ``reader`` may read of a stage: the modeller's message addressed to it, the consistency
    signatures whose lists name it (its neighbours', by their own signed word: a pod that names a stranger
    only shows the stranger a list it cannot check), and the shares records (cut by ``_shares_for``)."""
    if stage in MODELLER_STAGES:
        mine = addressed_sender(reader)
        return [record for record in records if record.sender == mine]
    if stage == "consistency":
        out = []
        for record in _naming(reader, records):
            view = ConsistencySignature.model_validate(json.loads(record.envelope)["payload"])
            if reader in view.survivors or reader in view.dropped:
                out.append(record)
        return out
    return records


def _naming(reader: str, records: list[RoundMessageRecord]) -> list[RoundMessageRecord]:
    """The records whose bytes hold ``reader``'s name as a JSON string: each pod polls a stage of up to
    a cohort's messages, of which only its neighbours' name it, so the rest are skipped unparsed."""
    quoted = json.dumps(reader).encode()
    return [record for record in records if quoted in record.envelope]


def _shares_for(reader: str, records: list[RoundMessageRecord]) -> dict[str, str]:
    """Sender -> the ciphertext it addressed to ``reader`` (authenticated by the AEAD, not by the hub)."""
    out: dict[str, str] = {}
    for record in _naming(reader, records):
        shares = EncryptedShares.model_validate(json.loads(record.envelope)["payload"])
        if reader in shares.ciphertexts:
            out[record.sender] = shares.ciphertexts[reader]
    return out


# -- blobs --------------------------------------------------------------------------------------


async def _blob_put(request: web.Request) -> web.Response:
    """Stream a blob in, within the uploader's quota; the uploader becomes one of its owners.

    An owner sending it again is answered at once (nothing read); another key must send the
    whole content, so knowing a sha256 never makes anyone an owner.
    """
    hub = _hub(request)
    signer = request[_SIGNER]
    sha256 = request.match_info["sha256"]
    hub.blobs.check_id(sha256)  # 400 for a malformed id before anything else
    # Uploaded again: the grace period before collection starts over. Refreshed first and the bytes looked for
    # after, so a collection that decided meanwhile (in any process) has removed them by then.
    if await hub.db(hub.storage.refresh_blob, sha256, owner=signer, now=hub.now()) and hub.blobs.exists(sha256):
        return web.json_response({"sha256": sha256, "outcome": "duplicate"})
    usage = await hub.db(hub.storage.blob_usage, signer)
    limits = hub.limits
    if usage.count >= limits.blob_quota_count:
        raise TooLarge(
            f"key {signer[:16]} holds {usage.count} blobs, the hub's quota (--blob-quota-count "
            f"{limits.blob_quota_count}); unreferenced ones are collected after {limits.blob_grace_s} s"
        )
    staged = await hub.blobs.receive(
        sha256, request.content.iter_chunked(1024 * 1024), declared_size=request.content_length,
        max_bytes=limits.blob_quota_bytes - usage.size_bytes,
        over_limit=(
            f"key {signer[:16]} holds {usage.size_bytes} of its {limits.blob_quota_bytes} bytes of blob quota "
            f"(--blob-quota-bytes); unreferenced blobs are collected after {limits.blob_grace_s} s"
        ),
    )
    try:
        # Recorded before its bytes are placed: a collection of the same blob in another process has then
        # either decided before (and removed the bytes it forgot) or finds this upload too recent to collect.
        await hub.db(hub.storage.put_blob, BlobRecord(sha256, staged.size_bytes, hub.now()), owner=signer)
        hub.blobs.place(staged)
    finally:
        hub.blobs.discard(staged)
    _log.info("blob stored (%d bytes) at %s", staged.size_bytes, sha256[:12])
    return web.json_response({"sha256": sha256, "size_bytes": staged.size_bytes, "outcome": "stored"}, status=201)


async def _blob_get(request: web.Request) -> web.StreamResponse:
    hub = _hub(request)
    sha256 = request.match_info["sha256"]
    pod = request[_SIGNER_POD]
    readable = hub.blobs.exists(sha256) and await hub.db(
        hub.storage.may_read_blob, sha256, key_id=request[_SIGNER], pod=None if pod is None else pod.name
    )
    if not readable:
        # One answer for absent and not shared: a sha256 alone tells a stranger nothing.
        raise HubError(
            f"no blob {sha256[:12]}... readable by this key: a blob is served to its uploader, to the modeller "
            "of a task whose result names it, and to the pods a task of its uploader pins it for",
            status=404,
        )
    return hub.blobs.response(sha256)


async def collect_blobs(app: web.Application) -> int:
    """Delete blobs nothing references whose last upload is older than the grace period; returns how many."""
    hub = app[_HUB]
    cutoff = hub.now() - hub.limits.blob_grace_s
    removed = 0
    for sha256 in await hub.db(hub.storage.unreferenced_blobs, uploaded_before=cutoff):
        if await hub.db(
            hub.storage.delete_blob_if_unreferenced, sha256, uploaded_before=cutoff, remove=hub.blobs.remove
        ):
            removed += 1
    if removed:
        _log.info("collected %d unreferenced blobs", removed)
    return removed


async def _listen_to_cluster(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the other hub processes' wake-ups wake this one's waiters."""
    hub = app[_HUB]
    task = asyncio.create_task(
        hub.cluster.run(lambda key: _on_cluster_key(hub, key), hub.wake_all_local), name="hub-cluster"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await hub.cluster.close()


async def _collect_periodically(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: blob collection runs every gc_interval_s while the app serves."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(app[_HUB].limits.gc_interval_s)
            try:
                await collect_blobs(app)
            except Exception as exc:  # noqa: BLE001 - last-resort guard: any storage backend's error
                # A failed pass (disk, database busy) is retried on the next; serving goes on regardless.
                _log.warning(
                    "blob collection failed: %s; retrying in %g s", exc, app[_HUB].limits.gc_interval_s, exc_info=True
                )

    task = asyncio.create_task(loop(), name="hub-blob-collection")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    storage: Storage,
    *,
    blob_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
    registration: RegistrationPolicy = "open",
    limits: HubLimits | None = None,
    status: StatusPage | None = None,
    cluster: Cluster | None = None,
) -> web.Application:
    """The hub as an aiohttp application; blobs go to ``blob_dir`` (a temporary dir if None). ``cluster``
    joins it to other hub processes on the same database (alone when None)."""
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=MAX_JSON_BODY_BYTES)
    owned_tmp = blob_dir is None
    root = blob_dir if blob_dir is not None else Path(tempfile.mkdtemp(prefix="pod-hub-blobs-"))
    app[_HUB] = _Hub(
        storage, BlobStore(root), clock, registration=registration, limits=limits or HubLimits(),
        cluster=cluster or SingleProcess(),
    )
    app.cleanup_ctx.append(_collect_periodically)
    app.cleanup_ctx.append(_listen_to_cluster)

    async def _close_sockets(app: web.Application) -> None:
        for ws in list(app[_HUB].sockets):
            await ws.close(code=1001, message=b"hub shutting down")

    async def _cleanup(app: web.Application) -> None:
        app[_HUB].fanout.settle(collect=False)  # a stopped hub holds the collector off no longer
        if owned_tmp:
            shutil.rmtree(root, ignore_errors=True)

    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_cleanup)
    r = app.router
    r.add_get("/healthz", _healthz, name="healthz")
    r.add_post("/v1/pods/register", _pods_register, name="pods_register")
    r.add_post("/v1/pod/heartbeat", _pod_heartbeat, name="pod_heartbeat")
    r.add_get("/v1/pod/ws", _pod_ws, name="pod_ws")
    r.add_get("/v1/pod/tasks", _pod_tasks, name="pod_tasks")
    r.add_post("/v1/pod/tasks/{task_id}/ack", _pod_task_ack, name="pod_task_ack")
    r.add_post("/v1/pod/tasks/{task_id}/refusal", _pod_task_refusal, name="pod_task_refusal")
    r.add_post("/v1/pod/tasks/{task_id}/progress", _pod_task_progress, name="pod_task_progress")
    r.add_post("/v1/pod/results", _pod_results, name="pod_results")
    r.add_post("/v1/modellers/register", _modellers_register, name="modellers_register")
    r.add_get("/v1/pods", _pods_list, name="pods_list")
    r.add_post("/v1/models", _models_publish, name="models_publish")
    r.add_get("/v1/models/{name}/{version}", _models_get, name="models_get")
    r.add_post("/v1/tasks", _tasks_submit, name="tasks_submit")
    r.add_get("/v1/tasks/{task_id}", _tasks_status, name="tasks_status")
    r.add_get("/v1/tasks/{task_id}/results", _tasks_results, name="tasks_results")
    r.add_get("/v1/tasks/{task_id}/wait", _tasks_wait, name="tasks_wait")
    r.add_put("/v1/blobs/{sha256}", _blob_put, name="blob_put")
    r.add_get("/v1/blobs/{sha256}", _blob_get, name="blob_get")
    r.add_post("/v1/secagg/{task_id}/{round:[0-9]{1,9}}/{stage}", _secagg_post, name="secagg_post")
    r.add_get("/v1/secagg/{task_id}/{round:[0-9]{1,9}}/{stage}", _secagg_get, name="secagg_get")
    if status is not None:
        # The operator's read-only page (hub.status), behind the admin token rather than a request signature.
        hub = app[_HUB]
        add_status_route(app, status, StatusSource(
            storage=storage, now=hub.now, online=lambda pod, now: _online(hub, pod, now), registration=registration,
        ))
    return app
