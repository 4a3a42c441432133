"""Signed HTTP to the hub, shared by pods (``agent.hubclient``) and modellers (``modeller.client``).

Owns one request's life on the wire: the Ed25519 request signature (``request_auth``),
the JSON reply, streamed blob downloads checked against their sha256, and failures
typed by what a caller can do about them: ``HubUnavailable`` (unreachable, timed out,
5xx, malformed reply: try again later) and ``HubRejected`` (4xx: this request will not
succeed as it is). Which TLS to use and what to send when stay with the callers.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from pod_agent.errors import HubRejected, HubUnavailable, ProtocolError
from pod_agent.protocol.canonical import parse_json
from pod_agent.protocol.keys import IdentityKey
from pod_agent.protocol.request_auth import sign_request

# Blob transfer chunk: throughput without holding a large update in memory twice.
BLOB_CHUNK_BYTES = 1024 * 1024

TlsChoice = ssl.SSLContext | aiohttp.Fingerprint | bool


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a URL's host part) is this machine: plain http is allowed only there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def signed_json(
    session: aiohttp.ClientSession,
    key: IdentityKey,
    *,
    base: str,
    method: str,
    path: str,
    tls: TlsChoice,
    body: bytes = b"",
    data: Any = None,
    timeout: aiohttp.ClientTimeout | None = None,
) -> Any:
    """Send a signed request and return its parsed JSON reply (``{}`` when empty).

    ``body`` is a JSON body and is signed; ``data`` (a streamed upload) is sent instead
    and the signature covers an empty body, the sha256 in the path binding the content.
    """
    headers = sign_request(key, method, path, body, now=int(time.time()))
    if body:
        headers["Content-Type"] = "application/json"
    try:
        async with session.request(
            method, base + path, data=data if data is not None else (body or None), headers=headers, ssl=tls,
            timeout=timeout,
        ) as resp:
            text = await resp.text()
            raise_for_status(resp.status, text, what=f"to {method} {path}")
            return parse_json(text) if text else {}
    except aiohttp.ServerFingerprintMismatch as exc:
        raise HubUnavailable(
            f"hub {base} certificate sha256 is {exc.got.hex()}, not the pinned {exc.expected.hex()}: "
            "fix the pin or the hub's certificate"
        ) from exc
    except aiohttp.ClientError as exc:
        raise HubUnavailable(f"hub {base} unreachable for {method} {path}: {exc}") from exc
    except TimeoutError as exc:
        raise HubUnavailable(f"hub {base} did not answer {method} {path} in time") from exc
    except ProtocolError as exc:
        raise HubUnavailable(f"hub answered {method} {path} with malformed JSON: {exc}") from exc


async def download_blob(
    session: aiohttp.ClientSession, key: IdentityKey, *, base: str, sha256: str, dest: Path, tls: TlsChoice
) -> Path:
    """Stream blob ``sha256`` to ``dest``; it is renamed into place only when its content hashes to it."""
    path = f"/v1/blobs/{sha256}"
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        async with session.get(
            base + path, headers=sign_request(key, "GET", path, b"", now=int(time.time())), ssl=tls
        ) as resp:
            if resp.status >= 400:
                raise_for_status(resp.status, await resp.text(), what=f"for blob {sha256[:12]}...")
            with tmp.open("wb") as out:
                async for chunk in resp.content.iter_chunked(BLOB_CHUNK_BYTES):
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
    except aiohttp.ClientError as exc:
        tmp.unlink(missing_ok=True)
        raise HubUnavailable(f"hub {base} unreachable while fetching blob {sha256[:12]}...: {exc}") from exc
    if digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise HubRejected(
            f"blob {sha256[:12]}... from the hub hashes to {digest.hexdigest()[:12]}...; discarded", status=422
        )
    tmp.replace(dest)
    return dest


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file as an async stream of chunks, read off the event loop."""
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, BLOB_CHUNK_BYTES):
            yield chunk


def raise_for_status(status: int, text: str, *, what: str) -> None:
    """HubUnavailable for 5xx, HubRejected for 4xx: "hub answered <status> <what>: <the hub's error>"."""
    if status < 400:
        return
    try:
        detail = str(parse_json(text)["error"])
    except (ProtocolError, KeyError, TypeError):
        detail = text[:200]
    message = f"hub answered {status} {what}: {detail}"
    if status >= 500:
        raise HubUnavailable(message, status=status)
    raise HubRejected(message, status=status)
