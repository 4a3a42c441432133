"""Async client of the hub for a modeller: register, list pods, submit signed tasks, fetch verified results.

Owns the modeller's side of the hub API (signed requests, TLS verification
against a CA bundle or a pinned certificate fingerprint as ``protocol.hub_tls`` sets it
up for pods too, streaming blob upload
and download with sha256 checks). JSON requests go one per connection through
``protocol.oneshot_call``, which needs no aiohttp; the aiohttp session (``protocol.hubhttp``)
is opened, and aiohttp imported, only for a blob, so a command that moves none (``pod-agent
modeller pods``) starts without it and the check that every result was signed by
the pod it names. The hub is not trusted: a result whose signature does not
verify against the pod's key is dropped with an error, never returned. Pod keys
come from ``pod_keys`` when given (pinned out of band, and followed through the
rotation statements the pinned keys signed: ``pinning.py``), else from the hub's
registry (trust on first use).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from pod_agent.errors import HubError, HubMisbehaved, HubUnavailable, ModellerError, ProtocolError
from pod_agent.modeller.pinning import PodKeys, hub_keys, pinned_keys
from pod_agent.protocol import (
    BlobRef,
    CohortEntry,
    Envelope,
    HubReply,
    IdentityKey,
    ModellerRegisteredStanding,
    ModellerRegistration,
    ModelPublication,
    PodList,
    PublicKey,
    ResultPayload,
    RoundMessage,
    RoundMessages,
    Stage,
    Stored,
    TaskPayload,
    TaskResults,
    TaskStatusReply,
    TaskSubmission,
    TaskSubmitted,
    TlsOptionNames,
    WeightsRef,
    canonical_json,
    cohort_tree,
    envelope_bytes,
    oneshot_call,
    open_envelope,
    round_path,
    sign_envelope,
    tls_for_hub,
)

if TYPE_CHECKING:
    import ssl

    import aiohttp

_log = logging.getLogger(__name__)

# Ends the unregistered-pods error where the user can run the CLI.
SEE_POD_LIST = "; see `pod-agent modeller pods`"
# The largest result blob a modeller downloads: a model update far beyond any this project trains.
MAX_DOWNLOAD_BYTES = 8 << 30
# One long poll for results; the hub answers sooner when a pod finishes, and caps it at 30 s.
RESULT_WAIT_S = 25.0
_R = TypeVar("_R", bound=HubReply)
_T = TypeVar("_T")
_Tls: TypeAlias = "ssl.SSLContext | aiohttp.Fingerprint | bool"  # the ``ssl=`` argument tls_for_hub makes


@dataclass(frozen=True)
class PodInfo:
    """A pod as the hub lists it (the hub's word, not verified)."""

    name: str
    key_id: str
    public_key: str
    schema: dict[str, Any]
    schema_hash: str
    row_count: int
    sandbox_level: str
    online: bool
    rotations: tuple[Envelope, ...] = ()  # statements handing the name on from older keys, as the hub relays them


@dataclass(frozen=True)
class VerifiedResult:
    """A result whose signature verified against its pod's key: ``pinned`` when that key came from the
    modeller's pod keys file, not from the hub (trust on first use)."""

    pod: str
    payload: ResultPayload
    envelope: Envelope
    pinned: bool


@dataclass(frozen=True)
class HubTaskStatus:
    """The hub's word on a task, per pod (delivered, result, refusal); not a pod's ``state.TaskStatus``."""

    task_id: str
    pods: dict[str, dict[str, Any]]

    def finished(self, pod: str) -> bool:
        entry = self.pods.get(pod, {})
        return entry.get("result") is not None or entry.get("refusal") is not None


# How a modeller spells each TLS option: the CLI's flags, then ModellerClient's arguments.
_TLS_NAMES = TlsOptionNames(
    url="hub URL", ca_bundle="CA bundle (--ca-bundle)", pinned_cert_sha256="pinned certificate sha256 (--pin-sha256)",
    unsafe_allow_http="--unsafe-allow-http (unsafe_allow_http=True)",
)
_FALLBACK_TLS_NAMES = TlsOptionNames(
    url="fallback hub URL (--fallback-hub)", ca_bundle=_TLS_NAMES.ca_bundle,
    pinned_cert_sha256=_TLS_NAMES.pinned_cert_sha256, unsafe_allow_http=_TLS_NAMES.unsafe_allow_http,
)


class ModellerClient:
    """The modeller's hub connection. Use as ``async with ModellerClient(url, key) as hub: ...``; with
    ``fallback_urls`` (other processes of the same hub, on one PostgreSQL) a request the current process cannot
    answer goes to the next."""

    def __init__(
        self,
        hub_url: str,
        key: IdentityKey,
        *,
        fallback_urls: Sequence[str] = (),
        ca_bundle: Path | None = None,
        pinned_cert_sha256: str | None = None,
        unsafe_allow_http: bool = False,
        timeout_s: float = 30.0,
        blob_timeout_s: float = 3600.0,
        pod_keys: Mapping[str, PublicKey] | None = None,
    ) -> None:
        self.key = key
        # Every URL is held to the same transport rules as the first (a fallback in clear text is refused too).
        self._hubs = [
            (url, tls_for_hub(url, ca_bundle=ca_bundle, pinned_cert_sha256=pinned_cert_sha256,
                              unsafe_allow_http=unsafe_allow_http, names=names))
            for url, names in [(hub_url.rstrip("/"), _TLS_NAMES)]
            + [(url.rstrip("/"), _FALLBACK_TLS_NAMES) for url in fallback_urls]
        ]
        self._current = 0
        self._timeout_s = timeout_s
        self._blob_timeout_s = blob_timeout_s
        self._pod_keys = dict(pod_keys) if pod_keys is not None else None
        self._session: aiohttp.ClientSession | None = None

    @property
    def hub_url(self) -> str:
        """The hub process requests go to now: the first URL until it fails, then the next that answers."""
        return self._hubs[self._current][0]

    async def __aenter__(self) -> ModellerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        """The aiohttp session for blobs, opened (and aiohttp imported) on the first one."""
        from pod_agent.protocol import hub_session

        if self._session is None:
            self._session = hub_session(connect_timeout_s=self._timeout_s)
        return self._session

    async def _request(
        self, method: str, path: str, *, reply: type[_R], body: bytes = b"",
        data: Callable[[], AsyncIterator[bytes]] | None = None, total_s: float | None = None,
    ) -> _R:
        """One signed request, its reply validated as ``reply``; every hub failure is a ModellerError. JSON goes
        through ``oneshot_call``; a streamed upload (``data`` makes the stream, afresh for each hub tried) through
        the aiohttp session."""
        deadline_s = self._timeout_s if total_s is None else total_s

        async def call(base: str, tls: _Tls) -> _R:
            if data is None:
                return await oneshot_call(self.key, base=base, method=method, path=path, body=body,
                                          tls=tls, reply=reply, total_s=deadline_s)
            from pod_agent.protocol import signed_call

            return await signed_call(self._http(), self.key, base=base, method=method, path=path, data=data(),
                                     tls=tls, reply=reply, total_s=deadline_s)

        return await self._on_a_live_hub(call)

    async def _on_a_live_hub(self, call: Callable[[str, _Tls], Awaitable[_T]]) -> _T:
        """``call`` on the current hub URL; while the hub is unreachable or failing (its process died, say), on
        each next ``fallback_urls`` entry in turn, which then stays current. A request the failed process may
        have stored is safe to send again: submissions and round messages are idempotent at the hub, blobs
        content-addressed, model versions immutable. A hub that answered nonsense is not retried elsewhere:
        that is a hub to stop trusting, not a dead one."""
        for tried in range(1, len(self._hubs) + 1):
            base, tls = self._hubs[self._current]
            try:
                return await call(base, tls)
            except HubMisbehaved as exc:
                raise ModellerError(str(exc)) from exc
            except HubUnavailable as exc:
                if tried == len(self._hubs):
                    raise ModellerError(str(exc)) from exc
                self._current = (self._current + 1) % len(self._hubs)
                _log.warning("%s; trying %s next", exc, self.hub_url)
            except HubError as exc:
                raise ModellerError(str(exc)) from exc
        raise AssertionError("unreachable: the last hub's failure is raised above")

    # -- registry ---------------------------------------------------------------------------

    async def register(self, name: str, *, enrolment_token: str | None = None) -> str:
        """Register this modeller's public key with the hub; returns the key id.

        ``enrolment_token``: from the hub operator's `pod-agent hub invite`, for a hub serving
        ``--registration token``. A hub serving ``--registration approve`` records a new key as
        pending: ModellerError says so (registering again once approved succeeds).
        """
        registration = ModellerRegistration(
            name=name, public_key=self.key.public.to_b64(), enrolment_token=enrolment_token
        )
        reply = await self._request(
            "POST", "/v1/modellers/register", reply=ModellerRegisteredStanding, body=canonical_json(registration)
        )
        if reply.pending:
            raise ModellerError(f"registered, but not admitted yet: {reply.message or 'the hub awaits approval'}")
        return reply.key_id

    async def pods(self) -> list[PodInfo]:
        reply = await self._request("GET", "/v1/pods", reply=PodList)
        return [
            PodInfo(
                name=p.name, key_id=p.key_id, public_key=p.public_key, schema=p.schema_, schema_hash=p.schema_hash,
                row_count=p.row_count, sandbox_level=p.sandbox_level, online=p.online, rotations=tuple(p.rotations),
            )
            for p in reply.pods
        ]

    async def wait_online(
        self, pods: list[str] | None, *, timeout_s: float, poll_s: float = 1.0
    ) -> list[PodInfo]:
        """The hub's listing once every pod of ``pods`` (None: every listed pod, and at least one) is online;
        ModellerError naming those still offline after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            listed = await self.pods()
            online = {p.name for p in listed if p.online}
            wanted = set(pods) if pods is not None else {p.name for p in listed}
            waiting = sorted(wanted - online)
            if wanted and not waiting:
                return listed
            if time.monotonic() >= deadline:
                named = waiting or "any pod (the hub lists none)"
                raise ModellerError(
                    f"still offline after {timeout_s:g} s: {named}; check `pod-agent run` on those hosts "
                    "and their hub URL"
                )
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    async def registered(self, pods: list[str], *, hint: str = "") -> dict[str, PodInfo]:
        """The hub's entry for each of ``pods``; ModellerError naming those it does not list
        (``hint`` ends that message)."""
        listed = {p.name: p for p in await self.pods()}
        missing = [p for p in pods if p not in listed]
        if missing:
            raise ModellerError(f"pods {missing} are not registered with the hub{hint}")
        return {p: listed[p] for p in pods}

    async def publish_model(
        self, *, name: str, version: str, style: str, source: str, sha256: str, class_name: str | None = None,
        weights_sha256: str | None = None, public: bool = False,
    ) -> str:
        """Publish a model version; private to this modeller and the pods its tasks target unless ``public``."""
        publication = ModelPublication(
            name=name, version=version, style=style, class_name=class_name, source=source, sha256=sha256,
            weights_sha256=weights_sha256, public=public,
        )
        reply = await self._request("POST", "/v1/models", reply=Stored, body=canonical_json(publication))
        return reply.outcome

    # -- tasks ------------------------------------------------------------------------------

    async def submit_task(self, payload: TaskPayload, cohort: Sequence[CohortEntry]) -> str:
        """Sign ``payload`` with the modeller key and submit it with the ``cohort`` its root commits to (the hub
        hands each pod its own entry and proof); returns the task id (idempotent)."""
        if payload.modeller_id != self.key.key_id:
            raise ModellerError("task modeller_id is not this client's key id; build it with build_task")
        if cohort_tree(cohort).commitment != payload.cohort:
            raise ModellerError(
                f"task {payload.task_id}'s signed cohort root {payload.cohort.root[:16]} is not the root of the "
                f"{len(cohort)} entries given: pass the entries the task was built from"
            )
        submission = TaskSubmission(envelope=sign_envelope(payload, self.key), cohort=list(cohort))
        await self._request("POST", "/v1/tasks", reply=TaskSubmitted, body=canonical_json(submission))
        return payload.task_id

    async def status(self, task_id: str) -> HubTaskStatus:
        reply = await self._request("GET", f"/v1/tasks/{task_id}", reply=TaskStatusReply)
        return HubTaskStatus(task_id=reply.task_id, pods={pod: entry.model_dump() for pod, entry in reply.pods.items()})

    async def results(self, task_id: str) -> list[VerifiedResult]:
        """The results stored so far, each verified against its pod's key (forgeries raise)."""
        reply = await self._request("GET", f"/v1/tasks/{task_id}/results", reply=TaskResults)
        keys = await self._keys()
        return [self._verify_result(envelope, task_id, keys) for envelope in reply.results]

    def _verify_result(self, envelope: Envelope, task_id: str, keys: PodKeys) -> VerifiedResult:
        claimed = envelope.payload.get("pod")
        in_force = keys.of(str(claimed))
        if in_force is None:
            raise ModellerError(f"result for task {task_id} names pod {claimed!r} whose key is {self._unknown_key}")
        key = next((k for k in in_force if k.key_id == envelope.signer), in_force[0])
        try:
            payload = open_envelope(envelope, ResultPayload, key)
        except ProtocolError as exc:
            raise ModellerError(f"result of pod {claimed!r} for task {task_id} fails verification: {exc}") from exc
        if payload.task_id != task_id:
            raise ModellerError(f"result of pod {claimed!r} is for task {payload.task_id}, not {task_id}")
        return VerifiedResult(pod=payload.pod, payload=payload, envelope=envelope, pinned=self._pod_keys is not None)

    async def _keys(self) -> PodKeys:
        """Pinned keys followed through the rotations they signed, else the hub's."""
        listed = await self.pods()
        if self._pod_keys is not None:
            return pinned_keys(self._pod_keys, {p.name: p.rotations for p in listed}, now=int(time.time()))
        return hub_keys({p.name: p.public_key for p in listed})

    @property
    def _unknown_key(self) -> str:
        if self._pod_keys is not None:
            return "not pinned; add the line `pod-agent keys show` prints on its host to the pod keys file"
        return "unknown to the hub"

    async def wait_results(
        self, task_id: str, pods: list[str], *, timeout_s: float = 600.0
    ) -> dict[str, VerifiedResult | str]:
        """Wait until every pod returned a result or refused; maps pod -> result or refusal code.

        Long polls the hub (``GET /v1/tasks/{id}/wait``), which answers as soon as another pod finishes,
        so a result is seen when it is stored, not at the next tick of a poll."""
        deadline = time.monotonic() + timeout_s
        finished = 0
        while True:
            wait_s = min(RESULT_WAIT_S, max(0.0, deadline - time.monotonic()))
            reply = await self._request(
                "GET", f"/v1/tasks/{task_id}/wait?after={finished}&wait={wait_s:.3f}", reply=TaskStatusReply,
                total_s=wait_s + self._timeout_s,
            )
            status = HubTaskStatus(task_id=reply.task_id, pods={p: e.model_dump() for p, e in reply.pods.items()})
            if all(status.finished(p) for p in pods):
                break
            if time.monotonic() >= deadline:
                missing = [p for p in pods if not status.finished(p)]
                raise ModellerError(f"task {task_id}: no answer from {missing} within {timeout_s:g} s")
            finished = reply.finished
        by_pod: dict[str, VerifiedResult | str] = {r.pod: r for r in await self.results(task_id)}
        for pod in pods:
            refusal = status.pods[pod].get("refusal")
            if pod not in by_pod and refusal is not None:
                by_pod[pod] = str(refusal)
        return by_pod

    # -- blobs ------------------------------------------------------------------------------

    async def upload_blob(self, path: Path) -> BlobRef:
        """Stream a safetensors file to the hub; the hub checks its sha256. Returns its reference."""
        from pod_agent.protocol import file_chunks

        sha256 = await asyncio.to_thread(_file_sha256, path)
        size = path.stat().st_size
        await self._request(
            "PUT", f"/v1/blobs/{sha256}", reply=Stored, data=lambda: file_chunks(path), total_s=self._blob_timeout_s
        )
        return BlobRef(sha256=sha256, size_bytes=size, encoding="safetensors")

    async def upload_weights(self, path: Path) -> WeightsRef:
        """Upload global or pretrained weights (safetensors) and return the reference a task pins."""
        ref = await self.upload_blob(path)
        return WeightsRef(blob_id=ref.sha256, sha256=ref.sha256, size_bytes=ref.size_bytes)

    async def identity_keys(self, pods: list[str]) -> dict[str, PublicKey]:
        """Each pod's identity key (the newest in force): pinned, else the hub's (trust on first use); ModellerError
        for one unknown or whose pin is out of date."""
        keys = await self._keys()
        in_force = {name: keys.of(name) for name in pods}
        unknown = [name for name, held in in_force.items() if not held]
        if unknown:
            raise ModellerError(f"pods {unknown}: their identity keys are {self._unknown_key}")
        return {name: held[0] for name, held in in_force.items() if held}

    async def cohort(self, pods: list[str], *, schema_hashes: Mapping[str, str] | None = None) -> list[CohortEntry]:
        """A task's cohort entries: each pod with the schema hash the task pins for it (``schema_hashes``, from a
        listing the caller already has, else the hub's) and its identity key id (pinned, else the hub's).

        Round keys are not here: each pod advertises fresh ones per task and round, signed
        (``secure_round.py``), and its peers check them against the keys their owners pinned.
        """
        keys = await self.identity_keys(pods)
        if schema_hashes is None:
            schema_hashes = {name: info.schema_hash for name, info in (await self.registered(pods)).items()}
        return [CohortEntry(pod=name, schema_hash=schema_hashes[name], key_id=keys[name].key_id) for name in pods]

    # -- secure rounds ------------------------------------------------------------------------

    async def post_round_message(self, stage: Stage, message: RoundMessage) -> None:
        """Sign one of the modeller's round messages and post it (the same message again is a no-op)."""
        body = envelope_bytes(sign_envelope(message, self.key))
        await self._request("POST", round_path(message.task_id, message.round, stage), reply=Stored, body=body)

    async def round_messages(
        self, task_id: str, round_index: int, stage: Stage, *, after: int, wait_s: float
    ) -> tuple[int, list[Envelope]]:
        """(messages held, the stage's envelopes), once the hub holds more than ``after`` or ``wait_s`` passed;
        the envelopes are as relayed, not verified."""
        path = f"{round_path(task_id, round_index, stage)}?wait={wait_s:g}&after={after}"
        reply = await self._request("GET", path, reply=RoundMessages, total_s=self._timeout_s + wait_s)
        return reply.count, reply.messages

    async def download_blob(self, sha256: str, dest: Path) -> Path:
        """Stream a blob to ``dest`` (at most MAX_DOWNLOAD_BYTES, within the blob timeout), checking its sha256
        before it is renamed into place."""
        from pod_agent.protocol import download_blob

        return await self._on_a_live_hub(lambda base, tls: download_blob(
            self._http(), self.key, base=base, sha256=sha256, dest=dest, tls=tls,
            max_bytes=MAX_DOWNLOAD_BYTES, total_s=self._blob_timeout_s,
        ))


def _file_sha256(path: Path) -> str:
    from pod_agent.protocol import BLOB_CHUNK_BYTES

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(BLOB_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
