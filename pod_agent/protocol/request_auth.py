"""Authentication of HTTP requests to the hub by an Ed25519 signature in headers.

Owns the string to sign and its headers. A request is signed over
``pod-agent-request-v1``, the signer's key id, the upper-case method, the request
target (path plus ``?query``, exactly as the server sees it, e.g. aiohttp's
``request.raw_path``), the sha256 hex of the body, an integer Unix timestamp and a
random nonce, one per line. The hub rejects a timestamp more than
``MAX_REQUEST_SKEW_S`` away from its clock and a (key id, nonce) pair it has seen
(``RequestReplayCache``). No bearer tokens: nothing in a URL grants access.

Which keys exist (``lookup``) is the hub's storage; this module only checks.
"""

from __future__ import annotations

import base64
import heapq
import re
import secrets
import threading
from collections.abc import Callable, Mapping

from pod_agent.errors import ProtocolError
from pod_agent.protocol.canonical import sha256_hex
from pod_agent.protocol.keys import IdentityKey, PublicKey, b64decode_strict

# Five minutes either way: enough for unsynchronised clocks, short enough to bound the replay cache.
MAX_REQUEST_SKEW_S = 300
# Far above what one small hub sees in a skew window; bounds memory if flooded by a registered key.
DEFAULT_REPLAY_ENTRIES = 200_000

HEADER_KEY_ID = "X-Pod-Key-Id"
HEADER_TIMESTAMP = "X-Pod-Timestamp"
HEADER_NONCE = "X-Pod-Nonce"
HEADER_BODY_SHA256 = "X-Pod-Content-Sha256"
HEADER_SIGNATURE = "X-Pod-Signature"

_SIGNING_TAG = "pod-agent-request-v1"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")


def _string_to_sign(*, key_id: str, method: str, path: str, body_sha256: str, timestamp: int, nonce: str) -> bytes:
    return "\n".join([_SIGNING_TAG, key_id, method.upper(), path, body_sha256, str(timestamp), nonce]).encode("utf-8")


def sign_request(key: IdentityKey, method: str, path: str, body: bytes, *, now: int) -> dict[str, str]:
    """Headers that authenticate this request as ``key``'s; add them to the request as they are."""
    nonce = secrets.token_hex(16)
    body_sha = sha256_hex(body)
    message = _string_to_sign(key_id=key.key_id, method=method, path=path, body_sha256=body_sha, timestamp=now, nonce=nonce)
    return {
        HEADER_KEY_ID: key.key_id,
        HEADER_TIMESTAMP: str(now),
        HEADER_NONCE: nonce,
        HEADER_BODY_SHA256: body_sha,
        HEADER_SIGNATURE: base64.b64encode(key.sign(message)).decode("ascii"),
    }


class RequestReplayCache:
    """Seen (key id, nonce) pairs of the last skew window, bounded in size.

    Entries leave when their timestamp falls out of the window. When the cache is
    full, the oldest entry is evicted and ``floor`` rises to its timestamp: any later
    request stamped at or before ``floor`` is refused, because its nonce can no
    longer be checked. A client signing with its current clock never meets this
    unless the hub is flooded.
    """

    def __init__(self, *, max_entries: int = DEFAULT_REPLAY_ENTRIES, window_s: int = MAX_REQUEST_SKEW_S) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._window_s = window_s
        self._seen: set[tuple[str, str]] = set()
        self._by_time: list[tuple[int, str, str]] = []
        self._floor = -1
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Pairs held now. (Not ``__len__``: an empty cache must not be falsy in ``cache or default``.)"""
        return len(self._seen)

    @property
    def floor(self) -> int:
        return self._floor

    def check_and_add(self, key_id: str, nonce: str, *, timestamp: int, now: int) -> None:
        """Record the pair or raise ProtocolError if it was seen (or can no longer be checked)."""
        with self._lock:
            # Older than the skew window is refused anyway; twice the window leaves margin for a clock stepping back.
            horizon = now - 2 * self._window_s
            while self._by_time and self._by_time[0][0] < horizon:
                _, k, n = heapq.heappop(self._by_time)
                self._seen.discard((k, n))
            if timestamp <= self._floor:
                raise ProtocolError("request timestamp too old for the replay cache: re-sign the request with the current time")
            if (key_id, nonce) in self._seen:
                raise ProtocolError(f"request nonce {nonce} from key {key_id[:16]} was already used: re-sign the request")
            while len(self._seen) >= self._max:
                ts, k, n = heapq.heappop(self._by_time)
                self._seen.discard((k, n))
                self._floor = max(self._floor, ts)
            if timestamp <= self._floor:
                raise ProtocolError("request timestamp too old for the replay cache: re-sign the request with the current time")
            self._seen.add((key_id, nonce))
            heapq.heappush(self._by_time, (timestamp, key_id, nonce))


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, item in headers.items():
            if key.lower() == lowered:
                value = item
                break
    if value is None:
        raise ProtocolError(f"request lacks header {name}: sign it with pod_agent.protocol.sign_request")
    return value


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    lookup: Callable[[str], PublicKey | None],
    replay: RequestReplayCache,
    now: int,
) -> str:
    """Return the key id that signed this request, or raise ProtocolError.

    Order: headers well-formed, timestamp within the skew, body hash, known key,
    signature, then the nonce is recorded (only for requests that verified, so
    unauthenticated traffic cannot fill the cache).
    """
    key_id = _header(headers, HEADER_KEY_ID)
    stamp = _header(headers, HEADER_TIMESTAMP)
    nonce = _header(headers, HEADER_NONCE)
    body_sha = _header(headers, HEADER_BODY_SHA256)
    signature_b64 = _header(headers, HEADER_SIGNATURE)
    if not _KEY_ID_RE.match(key_id):
        raise ProtocolError(f"header {HEADER_KEY_ID} is not a sha256 hex key id")
    if not _NONCE_RE.match(nonce):
        raise ProtocolError(f"header {HEADER_NONCE} must be 32 lowercase hex characters")
    if not _TIMESTAMP_RE.match(stamp):
        raise ProtocolError(f"header {HEADER_TIMESTAMP} must be integer Unix seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > MAX_REQUEST_SKEW_S:
        raise ProtocolError(
            f"request timestamp {timestamp} is {now - timestamp:+d} s from the hub's clock "
            f"(limit {MAX_REQUEST_SKEW_S} s): synchronise the clock (NTP) and retry"
        )
    if sha256_hex(body) != body_sha:
        raise ProtocolError("request body does not match its signed sha256: resend the request unmodified")
    public_key = lookup(key_id)
    if public_key is None:
        raise ProtocolError(f"key {key_id[:16]} is not registered with the hub: register it first")
    if public_key.key_id != key_id:
        raise ProtocolError(f"hub lookup for key {key_id[:16]} returned a different key")
    message = _string_to_sign(key_id=key_id, method=method, path=path, body_sha256=body_sha, timestamp=timestamp, nonce=nonce)
    public_key.verify(b64decode_strict(signature_b64, what=f"header {HEADER_SIGNATURE}"), message)
    replay.check_and_add(key_id, nonce, timestamp=timestamp, now=now)
    return key_id
