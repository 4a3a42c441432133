"""Signed HTTP to the hub, shared by pods (``agent.hubclient``) and modellers (``modeller.client``).

Owns one request's life on the wire: the Ed25519 request signature (``request_auth``),
reading the reply within bounds, parsing it against its ``hub_api`` model, streamed blob
downloads checked against their sha256, and failures typed by what a caller can do about
them: ``HubUnavailable`` (unreachable, timed out, 5xx: try again later), its subclass
``HubMisbehaved`` (a reply over its cap, not UTF-8 JSON, or not of its model: the hub is
broken or hostile, also try again later) and ``HubRejected`` (4xx: this request will not
succeed as it is).

Nothing the hub sends is trusted to be small or quick: a JSON reply is read up to
``hub_api.MAX_REPLY_BYTES`` by counting what arrives (a Content-Length is only an early
refusal) and parsed only when it holds at most ``hub_api.MAX_REPLY_VALUES`` values (tiny
values cost far more parsed than sent), a blob up to the caller's limit (its signed size, capped pod-side), and every
request runs under a total deadline, so a hub that drips one byte a second cannot hold a
caller forever. Compressed replies are not decoded (the sessions are opened with
``auto_decompress=False``): a small gzip body could otherwise inflate past any cap before
it is counted. Which TLS to use is ``hub_tls``'s; what to send when stays with the callers.
How a reply is judged (status, caps, parsing) is ``hub_reply``'s, shared with ``hub_oneshot``,
the aiohttp-free transport of a short-lived caller's JSON requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from pod_agent.errors import HubMisbehaved, HubUnavailable
from pod_agent.protocol.hub_api import MAX_REPLY_BYTES, HubReply
from pod_agent.protocol.hub_reply import (
    MAX_ERROR_BYTES,
    check_declared,
    check_received,
    is_loopback,
    parse_reply,
    raise_for_status,
)
from pod_agent.protocol.keys import IdentityKey
from pod_agent.protocol.request_auth import sign_request

# Blob transfer chunk: throughput without holding a large update in memory twice.
BLOB_CHUNK_BYTES = 1024 * 1024

TlsChoice = ssl.SSLContext | aiohttp.Fingerprint | bool
_R = TypeVar("_R", bound=HubReply)

# Judged in hub_reply, for both transports; named here too for this module's callers.
__all__ = [
    "BLOB_CHUNK_BYTES",
    "MAX_ERROR_BYTES",
    "TlsChoice",
    "download_blob",
    "file_chunks",
    "hub_session",
    "is_loopback",
    "parse_reply",
    "raise_for_status",
    "read_capped",
    "signed_call",
]


def hub_session(*, connect_timeout_s: float) -> aiohttp.ClientSession:
    """A session for talking to a hub: a connect timeout (each call brings its total deadline), and no
    transparent decompression (see above)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s), auto_decompress=False
    )


async def signed_call(
    session: aiohttp.ClientSession,
    key: IdentityKey,
    *,
    base: str,
    method: str,
    path: str,
    tls: TlsChoice,
    reply: type[_R],
    total_s: float,
    body: bytes = b"",
    data: Any = None,
) -> _R:
    """Send a signed request and return its reply parsed as ``reply`` (an empty body parses as ``{}``).

    ``body`` is a JSON body and is signed; ``data`` (a streamed upload) is sent instead and the
    signature covers an empty body, the sha256 in the path binding the content. The whole exchange,
    upload and reply included, must end within ``total_s``.
    """
    what = f"{method} {path}"
    headers = sign_request(key, method, path, body, now=int(time.time()))
    if body:
        headers["Content-Type"] = "application/json"
    try:
        async with asyncio.timeout(total_s):
            async with session.request(
                method, base + path, data=data if data is not None else (body or None), headers=headers, ssl=tls,
                allow_redirects=False,
            ) as resp:
                if resp.status >= 300:
                    raise_for_status(resp.status, await _error_text(resp), what=f"to {what}")
                raw = await read_capped(resp, max_bytes=MAX_REPLY_BYTES, what=f"reply to {what}")
    except aiohttp.ServerFingerprintMismatch as exc:
        raise HubUnavailable(
            f"hub {base} certificate sha256 is {exc.got.hex()}, not the pinned {exc.expected.hex()}: "
            "fix the pin or the hub's certificate"
        ) from exc
    except aiohttp.ClientError as exc:
        raise HubUnavailable(f"hub {base} unreachable for {what}: {exc}") from exc
    except TimeoutError as exc:
        raise HubUnavailable(f"hub {base} did not finish answering {what} within {total_s:g} s") from exc
    return parse_reply(raw, reply.model_validate, name=reply.__name__, what=f"reply to {what}")


async def read_capped(resp: aiohttp.ClientResponse, *, max_bytes: int, what: str) -> bytes:
    """The body of ``resp``, counted as it arrives; HubMisbehaved as soon as it passes ``max_bytes``."""
    check_declared(resp.content_length, max_bytes=max_bytes, what=what)
    buffer = bytearray()
    async for chunk in resp.content.iter_chunked(BLOB_CHUNK_BYTES):
        check_received(len(buffer) + len(chunk), max_bytes=max_bytes, what=what)
        buffer += chunk
    return bytes(buffer)


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """At most MAX_ERROR_BYTES of an error reply, as text (undecodable bytes replaced)."""
    buffer = bytearray()
    async for chunk in resp.content.iter_chunked(MAX_ERROR_BYTES):
        buffer += chunk[: MAX_ERROR_BYTES - len(buffer)]
        if len(buffer) >= MAX_ERROR_BYTES:
            break
    return buffer.decode("utf-8", errors="replace")


async def download_blob(
    session: aiohttp.ClientSession,
    key: IdentityKey,
    *,
    base: str,
    sha256: str,
    dest: Path,
    tls: TlsChoice,
    max_bytes: int,
    total_s: float,
) -> Path:
    """Stream blob ``sha256`` to ``dest``, at most ``max_bytes`` and within ``total_s``, hashing as it comes.

    It is renamed into place only when its content hashes to ``sha256``; on any failure (cap,
    deadline, connection, hash, cancellation) the partial file is deleted.
    """
    path = f"/v1/blobs/{sha256}"
    what = f"blob {sha256[:12]}..."
    tmp = dest.with_name(dest.name + ".part")
    try:
        async with asyncio.timeout(total_s):
            digest = await _stream_blob(session, key, base=base, path=path, tmp=tmp, tls=tls, max_bytes=max_bytes,
                                        what=what)
        if digest != sha256:
            raise HubMisbehaved(f"{what} from the hub hashes to {digest[:12]}...; discarded")
        tmp.replace(dest)
    except aiohttp.ClientError as exc:
        tmp.unlink(missing_ok=True)
        raise HubUnavailable(f"hub {base} unreachable while fetching {what}: {exc}") from exc
    except TimeoutError as exc:
        tmp.unlink(missing_ok=True)
        raise HubUnavailable(f"hub {base} did not deliver {what} within {total_s:g} s") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


async def _stream_blob(
    session: aiohttp.ClientSession, key: IdentityKey, *, base: str, path: str, tmp: Path, tls: TlsChoice,
    max_bytes: int, what: str,
) -> str:
    """Write the blob at ``path`` to ``tmp``; its sha256 hex. HubMisbehaved once it passes ``max_bytes``."""
    digest = hashlib.sha256()
    async with session.get(
        base + path, headers=sign_request(key, "GET", path, b"", now=int(time.time())), ssl=tls, allow_redirects=False
    ) as resp:
        if resp.status >= 300:
            raise_for_status(resp.status, await _error_text(resp), what=f"for {what}")
        declared = resp.content_length
        if declared is not None and declared > max_bytes:
            raise HubMisbehaved(f"hub offers {what} as {declared} bytes, over the {max_bytes} bytes expected")
        received = 0
        with tmp.open("wb") as out:
            async for chunk in resp.content.iter_chunked(BLOB_CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise HubMisbehaved(f"hub sent more of {what} than the {max_bytes} bytes expected")
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)
    return digest.hexdigest()


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file as an async stream of chunks, read off the event loop."""
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, BLOB_CHUNK_BYTES):
            yield chunk


