"""Authentication of HTTP requests to the hub by an Ed25519 signature in headers.

Owns the string to sign and its headers, and the hub's replay cache. A request is signed
over ``pod-agent-request-v1``, the signer's key id, the upper-case method, the request
target (path plus ``?query``, exactly as the server sees it, e.g. aiohttp's
``request.raw_path``), the sha256 hex of the body, an integer Unix timestamp and a
random nonce, one per line. The hub rejects a timestamp more than ``MAX_REQUEST_SKEW_S``
behind its clock or more than ``MAX_REQUEST_FUTURE_SKEW_S`` ahead of it, and a (key id,
nonce) pair it has seen (``RequestReplayCache``). No bearer tokens: nothing in a URL
grants access.

The checks come apart so that the hub can run the cheap ones before it reads a body:
``parse_signed_headers`` (well formed, within the clock window), then, once the body has
been hashed, ``check_signature`` and the replay cache. ``verify_request`` runs them all
for a body already in hand. Which keys exist (``lookup``) is the hub's storage; this
module only checks.
"""

from __future__ import annotations

import base64
import heapq
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pod_agent.errors import ProtocolError
from pod_agent.protocol.canonical import sha256_hex
from pod_agent.protocol.keys import IdentityKey, PublicKey, b64decode_strict

# Five minutes behind: enough for unsynchronised clocks, short enough to bound the replay cache.
MAX_REQUEST_SKEW_S = 300
# Ahead is kept short: a request stamped in the future stays in the replay cache (and can be
# replayed if evicted) for longer than an honest one, so a signer gains nothing honest from it.
MAX_REQUEST_FUTURE_SKEW_S = 30
# Far above what one small hub sees in a skew window; bounds memory (about 250 bytes each) if
# many registered keys flood it.
DEFAULT_REPLAY_ENTRIES = 200_000
# One key's share: above what the hub's default rate limit lets one key send in a window
# at a sustained rate, so only a flooding key ever evicts its own entries.
DEFAULT_REPLAY_ENTRIES_PER_KEY = 20_000

HEADER_KEY_ID = "X-Pod-Key-Id"
HEADER_TIMESTAMP = "X-Pod-Timestamp"
HEADER_NONCE = "X-Pod-Nonce"
HEADER_BODY_SHA256 = "X-Pod-Content-Sha256"
HEADER_SIGNATURE = "X-Pod-Signature"

_SIGNING_TAG = "pod-agent-request-v1"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# An Ed25519 signature is 64 bytes, 88 base64 characters; anything longer is not one.
_MAX_SIGNATURE_B64 = 100


def _string_to_sign(*, key_id: str, method: str, path: str, body_sha256: str, timestamp: int, nonce: str) -> bytes:
    return "\n".join([_SIGNING_TAG, key_id, method.upper(), path, body_sha256, str(timestamp), nonce]).encode("utf-8")


def sign_request(key: IdentityKey, method: str, path: str, body: bytes, *, now: int) -> dict[str, str]:
    """Headers that authenticate this request as ``key``'s; add them to the request as they are."""
    nonce = secrets.token_hex(16)
    body_sha = sha256_hex(body)
    message = _string_to_sign(
        key_id=key.key_id, method=method, path=path, body_sha256=body_sha, timestamp=now, nonce=nonce
    )
    return {
        HEADER_KEY_ID: key.key_id,
        HEADER_TIMESTAMP: str(now),
        HEADER_NONCE: nonce,
        HEADER_BODY_SHA256: body_sha,
        HEADER_SIGNATURE: base64.b64encode(key.sign(message)).decode("ascii"),
    }


@dataclass(frozen=True)
class SignedHeaders:
    """A request's authentication headers, well formed and within the clock window (not yet verified)."""

    key_id: str
    timestamp: int
    nonce: str
    body_sha256: str
    signature_b64: str


def parse_signed_headers(headers: Mapping[str, str], *, now: int) -> SignedHeaders:
    """The authentication headers, or ProtocolError if one is missing, malformed or out of the clock window.

    Reads nothing but headers, so a server can refuse before it reads a body.
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
    if not _SHA256_RE.match(body_sha):
        raise ProtocolError(f"header {HEADER_BODY_SHA256} must be the body's sha256 in lowercase hex")
    if len(signature_b64) > _MAX_SIGNATURE_B64:
        raise ProtocolError(f"header {HEADER_SIGNATURE} is too long for an Ed25519 signature")
    timestamp = int(stamp)
    if now - timestamp > MAX_REQUEST_SKEW_S or timestamp - now > MAX_REQUEST_FUTURE_SKEW_S:
        raise ProtocolError(
            f"request timestamp {timestamp} is {timestamp - now:+d} s from the hub's clock "
            f"(limits -{MAX_REQUEST_SKEW_S} s, +{MAX_REQUEST_FUTURE_SKEW_S} s): synchronise the clock (NTP) and retry"
        )
    return SignedHeaders(key_id, timestamp, nonce, body_sha, signature_b64)


def check_signature(signed: SignedHeaders, *, method: str, path: str, public_key: PublicKey) -> None:
    """Raise ProtocolError unless ``public_key`` signed this method, path, body hash, time and nonce."""
    if public_key.key_id != signed.key_id:
        raise ProtocolError(f"hub lookup for key {signed.key_id[:16]} returned a different key")
    message = _string_to_sign(
        key_id=signed.key_id, method=method, path=path, body_sha256=signed.body_sha256,
        timestamp=signed.timestamp, nonce=signed.nonce,
    )
    public_key.verify(b64decode_strict(signed.signature_b64, what=f"header {HEADER_SIGNATURE}"), message)


@dataclass
class _KeyNonces:
    """One key's seen nonces: a set to look up, a heap by timestamp to expire and evict, and the key's floor."""

    seen: set[str] = field(default_factory=set)
    by_time: list[tuple[int, str]] = field(default_factory=list)
    floor: int = -1


class RequestReplayCache:
    """Seen (key id, nonce) pairs of the clock window, bounded per key and in total.

    Entries leave when their timestamp falls out of the window. Each key holds at most
    ``max_entries_per_key``; past that its own oldest entry is evicted and that key's
    ``floor`` rises to its timestamp: a later request of that key stamped at or before its
    floor is refused, because its nonce can no longer be checked. When the whole cache is
    full, entries are shed from the keys holding the most, so a key can move no floor but
    its own unless it holds fewer entries than the flooder. A client signing with its
    current clock never meets a floor unless it floods the hub itself.
    """

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_REPLAY_ENTRIES,
        max_entries_per_key: int = DEFAULT_REPLAY_ENTRIES_PER_KEY,
        window_s: int = MAX_REQUEST_SKEW_S,
    ) -> None:
        if max_entries < 1 or max_entries_per_key < 1:
            raise ValueError("max_entries and max_entries_per_key must be at least 1")
        self._max = max_entries
        self._per_key = min(max_entries_per_key, max_entries)
        self._window_s = window_s
        self._keys: dict[str, _KeyNonces] = {}
        self._total = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Pairs held now. (Not ``__len__``: an empty cache must not be falsy in ``cache or default``.)"""
        return self._total

    def floor(self, key_id: str) -> int:
        """The timestamp at or before which ``key_id``'s requests are refused (-1: none)."""
        entries = self._keys.get(key_id)
        return -1 if entries is None else entries.floor

    def held_by(self, key_id: str) -> int:
        entries = self._keys.get(key_id)
        return 0 if entries is None else len(entries.seen)

    def check_and_add(self, key_id: str, nonce: str, *, timestamp: int, now: int) -> None:
        """Record the pair or raise ProtocolError if it was seen (or can no longer be checked)."""
        if timestamp - now > MAX_REQUEST_FUTURE_SKEW_S:
            # verify_request refuses these first; a direct caller must not park far-future entries here.
            raise ProtocolError(f"request timestamp {timestamp} is ahead of the hub's clock: synchronise the clock")
        with self._lock:
            entries = self._keys.setdefault(key_id, _KeyNonces())
            self._expire(entries, now)
            if timestamp <= entries.floor:
                raise ProtocolError(
                    "request timestamp too old for the replay cache: re-sign the request with the current time"
                )
            if nonce in entries.seen:
                raise ProtocolError(
                    f"request nonce {nonce} from key {key_id[:16]} was already used: re-sign the request"
                )
            while len(entries.seen) >= self._per_key:
                self._evict_oldest(entries)
            if timestamp <= entries.floor:
                raise ProtocolError(
                    "request timestamp too old for the replay cache: re-sign the request with the current time"
                )
            if self._total >= self._max:
                self._shed(now)
            entries.seen.add(nonce)
            heapq.heappush(entries.by_time, (timestamp, nonce))
            self._total += 1

    def _horizon(self, now: int) -> int:
        # Older than the skew window is refused anyway; twice the window leaves margin for a clock stepping back.
        return now - 2 * self._window_s

    def _expire(self, entries: _KeyNonces, now: int) -> None:
        horizon = self._horizon(now)
        while entries.by_time and entries.by_time[0][0] < horizon:
            _, nonce = heapq.heappop(entries.by_time)
            entries.seen.discard(nonce)
            self._total -= 1

    def _evict_oldest(self, entries: _KeyNonces) -> None:
        stamp, nonce = heapq.heappop(entries.by_time)
        entries.seen.discard(nonce)
        entries.floor = max(entries.floor, stamp)
        self._total -= 1

    def _shed(self, now: int) -> None:
        """Free a slice of the cache: expired entries first, then the oldest of whichever keys hold the most."""
        horizon = self._horizon(now)
        for key_id in list(self._keys):
            entries = self._keys[key_id]
            self._expire(entries, now)
            if not entries.seen and entries.floor < horizon:
                del self._keys[key_id]
        # Shed a batch, not one entry, so a full cache costs one pass over the keys per batch, not per request.
        target = self._max - max(1, self._max // 64)
        largest = [(-len(e.seen), key_id) for key_id, e in self._keys.items() if e.seen]
        heapq.heapify(largest)
        while self._total > target and largest:
            _, key_id = heapq.heappop(largest)
            entries = self._keys[key_id]
            self._evict_oldest(entries)
            if entries.seen:
                heapq.heappush(largest, (-len(entries.seen), key_id))


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

    Order: headers well-formed, timestamp within the window, body hash, known key,
    signature, then the nonce is recorded (only for requests that verified, so
    unauthenticated traffic cannot fill the cache).
    """
    signed = parse_signed_headers(headers, now=now)
    if sha256_hex(body) != signed.body_sha256:
        raise ProtocolError("request body does not match its signed sha256: resend the request unmodified")
    public_key = lookup(signed.key_id)
    if public_key is None:
        raise ProtocolError(f"key {signed.key_id[:16]} is not registered with the hub: register it first")
    check_signature(signed, method=method, path=path, public_key=public_key)
    replay.check_and_add(signed.key_id, signed.nonce, timestamp=signed.timestamp, now=now)
    return signed.key_id
