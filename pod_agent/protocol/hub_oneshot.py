"""One signed JSON request to the hub over its own connection, on asyncio streams, without aiohttp.

The transport of a short-lived caller: the modeller's client sends its JSON requests here, so that
``pod-agent modeller pods`` starts in a fraction of aiohttp's import time (``bench/cli_startup.py``);
streamed blobs and the pods' WebSocket stay with ``hubhttp``. Owns writing the request (HTTP/1.1,
``Connection: close``, signed by ``request_auth`` as ``hubhttp`` signs it, no compression asked) and
reading the reply within the same bounds: status line and headers within ``MAX_HEAD_BYTES``, the body
counted against ``hub_api.MAX_REPLY_BYTES`` as it arrives (Content-Length, chunked, or up to the close;
a Content-Length is only an early refusal), an error reply cut at ``MAX_ERROR_BYTES``, the whole
exchange within one total deadline, and ``hub_tls``'s choice honoured (plain, a verifying context, or a
pinned certificate sha256, compared once the handshake is done). How the reply is judged is
``hub_reply``'s, so both transports fail alike and with the same words.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from pod_agent.errors import HubMisbehaved, HubUnavailable, ProtocolError
from pod_agent.protocol.hub_api import MAX_REPLY_BYTES, HubReply
from pod_agent.protocol.hub_reply import (
    MAX_ERROR_BYTES,
    check_declared,
    check_received,
    parse_reply,
    raise_for_status,
)
from pod_agent.protocol.keys import IdentityKey
from pod_agent.protocol.request_auth import sign_request

if TYPE_CHECKING:
    from aiohttp import Fingerprint

# The status line and headers of a reply, together: an honest hub sends a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
_MAX_HEADERS = 100
_READ_BYTES = 64 * 1024
_R = TypeVar("_R", bound=HubReply)


@dataclass(frozen=True)
class _Head:
    status: int
    headers: dict[str, str]  # names lower-cased


async def oneshot_call(
    key: IdentityKey,
    *,
    base: str,
    method: str,
    path: str,
    tls: ssl.SSLContext | Fingerprint | bool,
    reply: type[_R],
    total_s: float,
    body: bytes = b"",
) -> _R:
    """Send a signed request with JSON ``body`` (may be empty) and return its reply parsed as ``reply`` (an empty
    body parses as ``{}``); the whole exchange ends within ``total_s``. Fails as ``hubhttp.signed_call`` does."""
    what = f"{method} {path}"
    if not (path.isascii() and path.isprintable()) or " " in path:
        raise ProtocolError(f"request path {path!r} holds a space, a control or a non-ASCII character")
    try:
        async with asyncio.timeout(total_s):
            raw = await _exchange(key, base=base, method=method, path=path, tls=tls, body=body, what=what)
    except TimeoutError as exc:  # before OSError, of which it is a subclass
        raise HubUnavailable(f"hub {base} did not finish answering {what} within {total_s:g} s") from exc
    except (OSError, EOFError) as exc:
        why = exc if str(exc) else "the connection closed mid-reply"
        raise HubUnavailable(f"hub {base} unreachable for {what}: {why}") from exc
    return parse_reply(raw, reply.model_validate, name=reply.__name__, what=f"reply to {what}")


async def _exchange(
    key: IdentityKey, *, base: str, method: str, path: str, tls: ssl.SSLContext | Fingerprint | bool, body: bytes,
    what: str,
) -> bytes:
    """The reply's body to a 2xx, else the typed failure ``raise_for_status`` makes of it."""
    parts = urlsplit(base)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    context, pinned = _tls_parts(tls) if secure else (None, None)
    reader, writer = await asyncio.open_connection(
        host, parts.port or (443 if secure else 80), ssl=context, server_hostname=host if context else None,
        limit=MAX_HEAD_BYTES,
    )
    try:
        if pinned is not None:
            _check_pin(writer, pinned, base=base)
        writer.write(_request(key, method=method, path=path, netloc=parts.netloc.rpartition("@")[2], body=body))
        await writer.drain()
        head = await _read_head(reader, what=f"reply to {what}")
        if head.status >= 300:
            text = await _read_body(reader, head, max_bytes=MAX_ERROR_BYTES, what=f"reply to {what}", cut=True)
            raise_for_status(head.status, text.decode("utf-8", errors="replace"), what=f"to {what}")
        return await _read_body(reader, head, max_bytes=MAX_REPLY_BYTES, what=f"reply to {what}")
    finally:
        writer.transport.abort()  # one request per connection: nothing to close gracefully, nor to wait for


def _tls_parts(tls: ssl.SSLContext | Fingerprint | bool) -> tuple[ssl.SSLContext, bytes | None]:
    """The context to hand-shake with, and the certificate sha256 to compare after it (a pin)."""
    if isinstance(tls, ssl.SSLContext):
        return tls, None
    if isinstance(tls, bool):
        return ssl.create_default_context(), None
    # A pin replaces the chain's verification, as aiohttp does for its Fingerprint: the digest is the check.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context, tls.fingerprint


def _check_pin(writer: asyncio.StreamWriter, pinned: bytes, *, base: str) -> None:
    tls_object = writer.get_extra_info("ssl_object")
    der = tls_object.getpeercert(binary_form=True) if tls_object is not None else None
    got = hashlib.sha256(der or b"").digest()
    if got != pinned:
        raise HubUnavailable(
            f"hub {base} certificate sha256 is {got.hex()}, not the pinned {pinned.hex()}: "
            "fix the pin or the hub's certificate"
        )


def _request(key: IdentityKey, *, method: str, path: str, netloc: str, body: bytes) -> bytes:
    headers = {
        "Host": netloc, "Connection": "close", "Accept-Encoding": "identity", "Content-Length": str(len(body)),
        **sign_request(key, method, path, body, now=int(time.time())),
    }
    if body:
        headers["Content-Type"] = "application/json"
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items()), "", ""]
    try:
        return "\r\n".join(lines).encode("ascii") + body
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"hub URL host {netloc!r} is not ASCII: give it in ASCII (punycode for a name)") from exc


async def _read_head(reader: asyncio.StreamReader, *, what: str) -> _Head:
    """Status line and headers; HubMisbehaved when they are over their caps or not HTTP/1.x."""
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError as exc:  # one line past the reader's limit (MAX_HEAD_BYTES)
            raise HubMisbehaved(f"hub's {what} has a header line over {MAX_HEAD_BYTES} bytes") from exc
        if not line.endswith(b"\n"):
            raise EOFError("the connection closed mid-reply")
        size += len(line)
        if size > MAX_HEAD_BYTES or len(lines) > _MAX_HEADERS:
            raise HubMisbehaved(f"hub's {what} has headers over {MAX_HEAD_BYTES} bytes or {_MAX_HEADERS} lines")
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line)
    status = lines[0].split(None, 2) if lines else []
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not (status[1].isdigit() and len(status[1]) == 3):
        raise HubMisbehaved(f"hub's {what} does not start with an HTTP/1.x status line")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Head(status=int(status[1]), headers=headers)


async def _read_body(
    reader: asyncio.StreamReader, head: _Head, *, max_bytes: int, what: str, cut: bool = False
) -> bytes:
    """The body, counted as it arrives: HubMisbehaved past ``max_bytes``, or (``cut``) the first ``max_bytes``."""
    coding = head.headers.get("transfer-encoding", "identity").lower()
    if coding == "chunked":
        return await _read_chunked(reader, max_bytes=max_bytes, what=what, cut=cut)
    if coding != "identity":
        raise HubMisbehaved(f"hub's {what} has a transfer encoding this client does not read: {coding[:40]!r}")
    declared = head.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise HubMisbehaved(f"hub's {what} has no usable Content-Length: {declared[:40]!r}")
    length = int(declared) if declared is not None else None
    if not cut:
        check_declared(length, max_bytes=max_bytes, what=what)
    buffer = bytearray()
    while length is None or len(buffer) < length:
        want = _READ_BYTES if length is None else min(_READ_BYTES, length - len(buffer))
        chunk = await reader.read(want)
        if not chunk:
            if length is not None:
                raise EOFError("the connection closed mid-reply")
            break
        if cut:
            buffer += chunk[: max_bytes - len(buffer)]
            if len(buffer) >= max_bytes:
                break
            continue
        check_received(len(buffer) + len(chunk), max_bytes=max_bytes, what=what)
        buffer += chunk
    return bytes(buffer)


async def _read_chunked(reader: asyncio.StreamReader, *, max_bytes: int, what: str, cut: bool) -> bytes:
    """A chunked body; a chunk is refused (or, ``cut``, shortened) as soon as its announced size passes the cap."""
    buffer = bytearray()
    while True:
        try:
            size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise HubMisbehaved(f"hub's {what} is not valid chunked encoding") from exc
        if size == 0:
            return bytes(buffer)
        if cut:
            buffer += await reader.readexactly(min(size, max_bytes - len(buffer)))
            if len(buffer) >= max_bytes:
                return bytes(buffer)
        else:
            check_received(len(buffer) + size, max_bytes=max_bytes, what=what)
            buffer += await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF
