"""The pod's typed client of the hub: one method per route, typed requests in, validated replies out.

Owns the pod's side of the hub API (``protocol.hub_api`` models; requests go through
``protocol.hubhttp``, shared with the modeller): the session, the task WebSocket
(``TaskStream``: ``HubPush`` in, ``PodMessage`` out), the URLs, the deadlines of each
kind of call, and the TLS options of pod.toml's ``[hub]`` (``hub.ca_bundle``,
``hub.pinned_cert_sha256``, ``hub.unsafe_allow_http``), which ``protocol.hub_tls`` turns
into a connection the same way as for a modeller. With ``hub.fallback_urls`` (several processes
of one hub), a call that finds its hub unavailable moves the client to the next URL, so the
daemon's retry goes there; so does an open task socket that the hub ends or leaves silent (a process
that died closes it at once: the retry goes to the next process, not first to the dead one).

Nothing the hub sends is trusted: every reply and pushed message is read within
``hub_api.MAX_REPLY_BYTES`` and a deadline and validated against its model. Failures are
typed: ``HubUnavailable`` (connection trouble, timeout or 5xx: retry later), its subclass
``HubMisbehaved`` (an oversized, malformed or wrongly shaped reply: also retry later) and
``HubRejected`` (4xx: this request will not succeed as it is). What to send when is the
daemon's (``daemon.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import aiohttp
from pydantic import TypeAdapter

from pod_agent.config import HubSection
from pod_agent.errors import HubError, HubMisbehaved, HubRejected, HubUnavailable
from pod_agent.protocol import (
    MAX_REPLY_BYTES,
    Code,
    HubPush,
    HubReply,
    IdentityKey,
    ModelSource,
    Ok,
    PendingTasks,
    PodAck,
    PodHeartbeat,
    PodMessage,
    PodPromote,
    PodRegisteredStanding,
    PodRegistration,
    ProgressEvent,
    Refusal,
    RoundMessages,
    Stored,
    TlsOptionNames,
    canonical_json,
    download_blob,
    file_chunks,
    hub_session,
    parse_reply,
    sign_request,
    signed_call,
    tls_for_hub,
)

_log = logging.getLogger(__name__)
_R = TypeVar("_R", bound=HubReply)
_PUSH: TypeAdapter[HubPush] = TypeAdapter(HubPush)


# How the pod's operator spells each TLS option: the keys of pod.toml's [hub] section.
_TLS_NAMES = TlsOptionNames(
    url="hub.url", ca_bundle="hub.ca_bundle", pinned_cert_sha256="hub.pinned_cert_sha256",
    unsafe_allow_http="hub.unsafe_allow_http = true",
)
_FALLBACK_TLS_NAMES = TlsOptionNames(
    url="hub.fallback_urls entry", ca_bundle=_TLS_NAMES.ca_bundle, pinned_cert_sha256=_TLS_NAMES.pinned_cert_sha256,
    unsafe_allow_http=_TLS_NAMES.unsafe_allow_http,
)


def hub_ssl(section: HubSection) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """The ``ssl=`` argument for every request to the hub (``protocol.hub_tls``); ConfigError for an unsafe URL
    (``hub.url`` or any of ``hub.fallback_urls``)."""
    tls = tls_for_hub(
        section.url, ca_bundle=section.ca_bundle, pinned_cert_sha256=section.pinned_cert_sha256,
        unsafe_allow_http=section.unsafe_allow_http, names=_TLS_NAMES,
    )
    for url in section.fallback_urls:
        tls_for_hub(
            url, ca_bundle=section.ca_bundle, pinned_cert_sha256=section.pinned_cert_sha256,
            unsafe_allow_http=section.unsafe_allow_http, names=_FALLBACK_TLS_NAMES,
        )
    return tls


# A heartbeat's frame never changes; an ack's differs only in its task id, which its model holds to hex digits and
# dashes (JSON writes them as they are). Both written out are byte for byte their ``canonical_json``: a pod sends
# one per delivery and one per heartbeat, and the general encoder's dump and normalising walk cost more than the
# frame's write.
_HEARTBEAT_FRAME = canonical_json(PodHeartbeat()).decode()
_PROMOTE_FRAME = canonical_json(PodPromote()).decode()


def pod_frame(message: PodMessage) -> str:
    """``message`` as the text frame the task socket carries: its canonical JSON."""
    if isinstance(message, PodAck):
        return f'{{"task_id":"{message.task_id}","type":"ack"}}'
    if isinstance(message, PodPromote):
        return _PROMOTE_FRAME
    return _HEARTBEAT_FRAME


class TaskStream:
    """The pod's open task WebSocket: pushed messages validated as ``HubPush``, ``PodMessage`` sent."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, *, base: str = "",
        lost: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self._ws = ws
        self.base = base  # the hub URL it is open to
        self.lost = lost

    async def receive(self, *, timeout_s: float) -> HubPush:
        """The next pushed message; HubUnavailable when the hub is silent ``timeout_s`` or closes the
        connection, HubMisbehaved when it sends one over the cap, not UTF-8 or not a ``HubPush`` (each
        under ``lost``: the client's failover)."""
        with self.lost():
            return await self._receive(timeout_s)

    async def _receive(self, timeout_s: float) -> HubPush:
        try:
            msg = await self._ws.receive(timeout=timeout_s)
        except TimeoutError as exc:
            raise HubUnavailable(f"hub sent nothing on the task connection for {timeout_s:g} s") from exc
        if msg.type is aiohttp.WSMsgType.ERROR:
            # aiohttp reports an oversized or undecodable frame as an error message (its own words) and closes.
            raise HubMisbehaved(f"hub broke the task connection's framing: {msg.data}")
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise HubUnavailable(f"hub closed the task connection ({msg.type.name})")
        return parse_reply(msg.data, _PUSH.validate_python, name="HubPush", what="message on the task connection")

    async def send(self, message: PodMessage) -> None:
        await self._ws.send_str(pod_frame(message))

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def __aenter__(self) -> TaskStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._ws.close()


class HubClient:
    """One aiohttp session to the hub; ``async with HubClient(section, key) as hub``."""

    def __init__(self, section: HubSection, key: IdentityKey) -> None:
        self._bases = [url.rstrip("/") for url in (section.url, *section.fallback_urls)]
        self._current = 0
        self.key = key
        self._ssl = hub_ssl(section)
        self._timeout_s = section.request_timeout_s
        self._blob_timeout_s = section.blob_timeout_s
        self._max_blob_bytes = section.max_blob_mb << 20
        self._session: aiohttp.ClientSession | None = None
        self._stream: TaskStream | None = None  # the task socket last opened, which acks go over while open

    async def __aenter__(self) -> HubClient:
        self._session = hub_session(connect_timeout_s=self._timeout_s)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def base(self) -> str:
        """The hub URL calls go to now."""
        return self._bases[self._current]

    @property
    def standby_base(self) -> str | None:
        """The hub URL a standby task socket goes to: the next of the hub's URLs, if it has more than one."""
        return self._bases[(self._current + 1) % len(self._bases)] if len(self._bases) > 1 else None

    @contextlib.contextmanager
    def _failing_over(self) -> Iterator[None]:
        """On HubUnavailable, the next call goes to the next of the hub's URLs (if it has more than one)."""
        try:
            yield
        except HubUnavailable:
            if len(self._bases) > 1:
                failed = self.base
                self._current = (self._current + 1) % len(self._bases)
                _log.warning("hub %s unavailable; the next try goes to %s", failed, self.base)
            raise

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise HubError("HubClient used outside `async with`")
        return self._session

    async def _call(self, method: str, path: str, *, reply: type[_R], body: bytes = b"", extra_s: float = 0.0) -> _R:
        """One signed request; ``extra_s`` is time the hub may hold it on purpose (a long poll)."""
        with self._failing_over():
            return await signed_call(
                self.session, self.key, base=self.base, method=method, path=path, tls=self._ssl, reply=reply,
                body=body, total_s=self._timeout_s + extra_s,
            )

    async def health_seconds(self) -> float:
        """Round-trip time of the hub's ``/healthz``; raises HubUnavailable / HubRejected."""
        started = time.monotonic()
        await self._call("GET", "/healthz", reply=Ok)
        return time.monotonic() - started

    # -- registration and tasks --------------------------------------------------------------

    async def register(self, registration: PodRegistration) -> PodRegisteredStanding:
        """Register (or update) the pod; a hub that approves keys by hand may answer that it is still pending."""
        # Unset optional fields are left out, so that a hub older than one of them (rotation) still takes it.
        body = canonical_json(registration.model_dump(mode="json", exclude_none=True))
        return await self._call("POST", "/v1/pods/register", reply=PodRegisteredStanding, body=body)

    async def task_stream(self, *, heartbeat_s: float) -> TaskStream:
        """Open the pod's task WebSocket (``async with`` the stream closes it); HubRejected when the hub
        does not offer it (fall back to ``pending_tasks``)."""
        headers = sign_request(self.key, "GET", "/v1/pod/ws", b"", now=int(time.time()))
        with self._failing_over():
            ws = await self._open_ws(self.base, "/v1/pod/ws", headers, heartbeat_s=heartbeat_s)
            self._stream = TaskStream(ws, base=self.base, lost=self._failing_over)
            return self._stream

    async def standby_stream(self, *, heartbeat_s: float) -> TaskStream:
        """Open a standby task WebSocket at ``standby_base``: the hub pushes nothing on it until ``promote``.
        Its failures do not move the client to another URL (the socket in use is elsewhere)."""
        base = self.standby_base
        if base is None:
            raise HubError("a standby task socket needs another hub URL: set hub.fallback_urls")
        path = "/v1/pod/ws?standby=1"
        headers = sign_request(self.key, "GET", path, b"", now=int(time.time()))
        return TaskStream(await self._open_ws(base, path, headers, heartbeat_s=heartbeat_s), base=base)

    async def promote(self, stream: TaskStream) -> None:
        """Make the standby ``stream`` the pod's task socket: the hub pushes on it from now, and calls and acks
        go to its URL."""
        await stream.send(PodPromote())
        self._current = self._bases.index(stream.base)
        stream.lost = self._failing_over
        self._stream = stream

    async def _open_ws(
        self, base: str, path: str, headers: dict[str, str], *, heartbeat_s: float
    ) -> aiohttp.ClientWebSocketResponse:
        try:
            # The handshake is bounded like any request: a hub that never answers it holds no loop.
            async with asyncio.timeout(self._timeout_s):
                ws = await self.session.ws_connect(
                    base + path, headers=headers, ssl=self._ssl, autoping=True,
                    receive_timeout=None, max_msg_size=MAX_REPLY_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=heartbeat_s),
                )
        except aiohttp.WSServerHandshakeError as exc:
            if 400 <= exc.status < 500:
                raise HubRejected(
                    f"hub refused the WebSocket ({exc.status}): {exc.message}", status=exc.status
                ) from exc
            raise HubUnavailable(f"hub WebSocket handshake failed ({exc.status})", status=exc.status) from exc
        except aiohttp.ClientError as exc:
            raise HubUnavailable(f"hub {base} unreachable for the WebSocket: {exc}") from exc
        except TimeoutError as exc:
            raise HubUnavailable(f"hub {base} did not open the WebSocket within {self._timeout_s:g} s") from exc
        return ws

    async def pending_tasks(self, *, wait_s: float) -> PendingTasks:
        """Long poll: the tasks the hub holds for this pod, once there are any or ``wait_s`` passed."""
        return await self._call("GET", f"/v1/pod/tasks?wait={wait_s:g}", reply=PendingTasks, extra_s=wait_s)

    async def ack(self, task_id: str) -> None:
        """On the open task socket, whose signed handshake vouches for this pod (the hub counts it for a task it
        pushed on that socket: one verified, signed request less per pod in a fan-out); else a signed request.
        Either may be lost: the hub then delivers the task again, and it is acknowledged again."""
        stream = self._stream
        if stream is not None and not stream.closed:
            try:
                await stream.send(PodAck(task_id=task_id))
                return
            except ConnectionError:  # closing meanwhile: the signed request below
                pass
        await self._call("POST", f"/v1/pod/tasks/{task_id}/ack", reply=Ok, body=b"{}")

    async def refuse(self, task_id: str, code: Code) -> None:
        """Tell the hub (only) that this pod refuses a task it could not even attribute: the code, nothing else."""
        await self._call("POST", f"/v1/pod/tasks/{task_id}/refusal", reply=Ok, body=canonical_json(Refusal(code=code)))

    async def progress(self, event: ProgressEvent) -> None:
        await self._call("POST", f"/v1/pod/tasks/{event.task_id}/progress", reply=Ok, body=canonical_json(event))

    async def upload_result(self, envelope: bytes) -> Stored:
        """Upload a signed result envelope (its blob, if any, first: ``put_blob``)."""
        return await self._call("POST", "/v1/pod/results", reply=Stored, body=envelope)

    # -- what tasks need ---------------------------------------------------------------------

    async def model_source(self, name: str, version: str) -> ModelSource:
        return await self._call("GET", f"/v1/models/{name}/{version}", reply=ModelSource)

    async def fetch_blob(self, sha256: str, dest: Path, *, size_bytes: int) -> Path:
        """Stream blob ``sha256`` to ``dest``: at most ``size_bytes`` (its signed size) and ``hub.max_blob_mb``,
        within ``hub.blob_timeout_s``, renamed into place only when it hashes to ``sha256``."""
        if size_bytes > self._max_blob_bytes:
            raise HubRejected(
                f"blob {sha256[:12]}... is signed as {size_bytes} bytes, over hub.max_blob_mb "
                f"({self._max_blob_bytes >> 20} MiB): raise it in pod.toml to accept such tasks"
            )
        with self._failing_over():
            return await download_blob(
                self.session, self.key, base=self.base, sha256=sha256, dest=dest, tls=self._ssl,
                max_bytes=size_bytes, total_s=self._blob_timeout_s,
            )

    async def put_blob(self, path: Path, sha256: str) -> None:
        """Stream a file to the hub (signature over an empty body; the sha256 in the URL binds the content)."""
        with self._failing_over():
            await signed_call(
                self.session, self.key, base=self.base, method="PUT", path=f"/v1/blobs/{sha256}", tls=self._ssl,
                reply=Stored, data=file_chunks(path), total_s=self._blob_timeout_s,
            )

    async def round_post(self, path: str, body: bytes) -> None:
        """Post a signed secure-round message to its stage's ``path``."""
        await self._call("POST", path, reply=Stored, body=body)

    async def round_get(self, path: str, *, after: int, wait_s: float) -> RoundMessages:
        """Long poll a secure-round stage: what it holds once more than ``after`` messages or ``wait_s`` passed."""
        return await self._call("GET", f"{path}?wait={wait_s:g}&after={after}", reply=RoundMessages, extra_s=wait_s)
