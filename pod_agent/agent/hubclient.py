"""The pod's HTTP and WebSocket client of the hub: signed requests, TLS verification, typed failures.

Owns the pod's side of the transport (requests themselves go through
``protocol.hubhttp``, shared with the modeller): the session, the WebSocket, and
TLS verified against ``hub.ca_bundle`` or a pinned
certificate sha256 (``hub.pinned_cert_sha256``), else the system trust store;
plain http only to a loopback hub unless ``hub.allow_insecure_http`` (warned at
start). Failures are typed: ``HubUnavailable`` (connection trouble or 5xx: retry
later) and ``HubRejected`` (4xx: this request will not succeed as it is). What to
send when is the daemon's (``daemon.py``).
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from pod_agent.config.settings import HubSection
from pod_agent.errors import ConfigError, HubError, HubRejected, HubUnavailable
from pod_agent.protocol import IdentityKey, sign_request
from pod_agent.protocol.hubhttp import download_blob, file_chunks, is_loopback, signed_json

_log = logging.getLogger(__name__)


def hub_ssl(section: HubSection) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """The ``ssl=`` argument for every request to the hub; raises ConfigError for an unsafe URL."""
    parts = urlsplit(section.url)
    if parts.scheme == "http":
        if not is_loopback(parts.hostname or ""):
            if not section.allow_insecure_http:
                raise ConfigError(
                    f"hub.url {section.url} is plain http to a non-loopback host: use https, "
                    "or set hub.allow_insecure_http = true (unsafe: tasks and results travel in clear text)"
                )
            _log.warning("hub.allow_insecure_http is set: talking to %s without TLS (unsafe)", section.url)
        return False
    if parts.scheme != "https":
        raise ConfigError(f"hub.url {section.url!r} must start with https:// (or http:// for a loopback hub)")
    if section.pinned_cert_sha256:
        try:
            digest = bytes.fromhex(section.pinned_cert_sha256.replace(":", ""))
            return aiohttp.Fingerprint(digest)
        except ValueError as exc:
            raise ConfigError(
                f"hub.pinned_cert_sha256 {section.pinned_cert_sha256!r} is not the 64-hex sha256 of a DER certificate"
            ) from exc
    if section.ca_bundle is not None:
        try:
            return ssl.create_default_context(cafile=str(section.ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"hub.ca_bundle {section.ca_bundle} cannot be loaded: {exc}") from exc
    return ssl.create_default_context()


class HubClient:
    """One aiohttp session to the hub; ``async with HubClient(section, key) as hub``."""

    def __init__(self, section: HubSection, key: IdentityKey) -> None:
        self.base = section.url.rstrip("/")
        self.key = key
        self._ssl = hub_ssl(section)
        self._timeout_s = section.request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HubClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s)
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise HubError("HubClient used outside `async with`")
        return self._session

    async def health_seconds(self) -> float:
        """Round-trip time of the hub's ``/healthz``; raises HubUnavailable / HubRejected."""
        started = time.monotonic()
        await self.call("GET", "/healthz")
        return time.monotonic() - started

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return sign_request(self.key, method, path, body, now=int(time.time()))

    async def call(self, method: str, path: str, body: bytes = b"", *, read_timeout_s: float | None = None) -> Any:
        """Send a signed request with a JSON body; return the parsed JSON reply."""
        timeout = None if read_timeout_s is None else aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout_s, sock_read=read_timeout_s
        )
        return await signed_json(
            self.session, self.key, base=self.base, method=method, path=path, body=body, tls=self._ssl, timeout=timeout
        )

    async def put_blob(self, path: Path, sha256: str) -> None:
        """Stream a file to the hub (signature over an empty body; the sha256 in the URL binds the content)."""
        await signed_json(
            self.session, self.key, base=self.base, method="PUT", path=f"/v1/blobs/{sha256}", tls=self._ssl,
            data=file_chunks(path),
        )

    async def download_blob(self, sha256: str, dest: Path) -> None:
        """Stream a blob to ``dest``; it is renamed into place only when its sha256 matches."""
        await download_blob(self.session, self.key, base=self.base, sha256=sha256, dest=dest, tls=self._ssl)

    async def websocket(self, *, heartbeat_s: float) -> aiohttp.ClientWebSocketResponse:
        """Open the pod's task WebSocket; HubRejected when the hub does not offer it (fall back to polling)."""
        headers = self._headers("GET", "/v1/pod/ws", b"")
        try:
            return await self.session.ws_connect(
                self.base + "/v1/pod/ws", headers=headers, ssl=self._ssl, autoping=True,
                receive_timeout=None, max_msg_size=16 * 1024 * 1024,
                timeout=aiohttp.ClientWSTimeout(ws_close=heartbeat_s),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if 400 <= exc.status < 500:
                raise HubRejected(f"hub refused the WebSocket ({exc.status}): {exc.message}", status=exc.status) from exc
            raise HubUnavailable(f"hub WebSocket handshake failed ({exc.status})", status=exc.status) from exc
        except aiohttp.ClientError as exc:
            raise HubUnavailable(f"hub {self.base} unreachable for the WebSocket: {exc}") from exc
