"""How much the hub takes from one caller: request rate per key, body size per route, blob quota per key.

Owns ``HubLimits`` (the operator's numbers, set on ``pod-agent hub serve``), the per-key token
bucket (``RateLimiter``), the body cap of each route (``body_cap``) and the errors a caller
gets past a limit (``RateLimited``: 429 with Retry-After; ``TooLarge``: 413). The server
decides when each is checked: the rate before a body is read, the cap while it is read.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from pod_agent.errors import HubError
from pod_agent.protocol import DEFAULT_REPLAY_ENTRIES, DEFAULT_REPLAY_ENTRIES_PER_KEY, MAX_STAGE_BYTES, STAGES

# Registration carries the pod's public schema (a few tens of KiB for a wide table); it is read
# before the hub knows the key, so it gets the smallest cap that fits an honest one.
MAX_REGISTRATION_BYTES = 256 * 1024
# Acks, refusals, progress events and heartbeats are a few hundred bytes.
MAX_SMALL_BODY_BYTES = 64 * 1024
# A result envelope holds metrics and a blob reference; the update itself travels as a blob.
MAX_RESULT_BYTES = 1024 * 1024
# A task or a model with inline source: pods cap tasks at 4 MiB by default and read deliveries up to
# protocol.hub_api.MAX_REPLY_BYTES (8 MiB), so nothing larger could ever reach one.
MAX_TASK_BYTES = 8 * 1024 * 1024

# Far above what a pod or modeller sends (a secure round is a few requests a second per party),
# so tests and the demo never meet it; a runaway or hostile key does.
DEFAULT_RATE_PER_S = 50.0
DEFAULT_RATE_BURST = 500
# Per key, over all blobs it uploaded (a blob two keys uploaded counts for both): room for many
# rounds of a mid-sized model's updates; unreferenced blobs are collected after the grace period.
DEFAULT_BLOB_QUOTA_BYTES = 20 * 1024**3
DEFAULT_BLOB_QUOTA_COUNT = 10_000
# An upload no task, result or model names yet is kept this long: a modeller uploads weights
# before the task that pins them, a pod its result blob before the result.
DEFAULT_BLOB_GRACE_S = 24 * 3600
DEFAULT_GC_INTERVAL_S = 600.0

_SMALL_ROUTES = frozenset({"pod_heartbeat", "pod_task_ack", "pod_task_refusal", "pod_task_progress"})
_REGISTER_ROUTES = frozenset({"pods_register", "modellers_register"})
_TASK_ROUTES = frozenset({"tasks_submit", "models_publish"})


@dataclass(frozen=True)
class HubLimits:
    """The operator's limits; the defaults suit a small hub and are never met by honest traffic."""

    rate_per_s: float = DEFAULT_RATE_PER_S
    rate_burst: int = DEFAULT_RATE_BURST
    blob_quota_bytes: int = DEFAULT_BLOB_QUOTA_BYTES
    blob_quota_count: int = DEFAULT_BLOB_QUOTA_COUNT
    blob_grace_s: int = DEFAULT_BLOB_GRACE_S
    gc_interval_s: float = DEFAULT_GC_INTERVAL_S
    replay_entries: int = DEFAULT_REPLAY_ENTRIES
    replay_entries_per_key: int = DEFAULT_REPLAY_ENTRIES_PER_KEY

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or self.rate_burst < 1:
            raise HubError(f"rate limit {self.rate_per_s}/s burst {self.rate_burst} must be positive; raise it")
        if self.blob_quota_bytes < 0 or self.blob_quota_count < 0 or self.blob_grace_s < 0:
            raise HubError("blob quotas and grace period must not be negative")
        if self.replay_entries < 1 or self.replay_entries_per_key < 1:
            raise HubError("the replay cache needs room for at least one request per key")
        if not self.gc_interval_s > 0:
            raise HubError(f"garbage collection interval {self.gc_interval_s} s must be positive")


class RateLimited(HubError):
    """A key sent more requests than its rate allows (HTTP 429 with Retry-After)."""

    def __init__(self, key_id: str, retry_after_s: float) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"key {key_id[:16]} is over the hub's request rate; retry after {self.retry_after_s} s "
            f"(the operator sets it with `pod-agent hub serve --rate-per-s/--rate-burst`)",
            status=429,
        )


class TooLarge(HubError):
    """A request body past its route's cap, or a blob past the uploader's quota (HTTP 413)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=413)


def body_cap(route: str | None, stage: str | None) -> int:
    """The most body bytes the hub reads for ``route`` (``stage``: a secure-round POST's URL stage)."""
    if route in _REGISTER_ROUTES:
        return MAX_REGISTRATION_BYTES
    if route in _SMALL_ROUTES:
        return MAX_SMALL_BODY_BYTES
    if route == "pod_results":
        return MAX_RESULT_BYTES
    if route in _TASK_ROUTES:
        return MAX_TASK_BYTES
    if route == "secagg_post" and stage in STAGES:
        return MAX_STAGE_BYTES[stage]
    # GETs and anything unlisted carry no body.
    return 0


class RateLimiter:
    """A token bucket per key id: ``burst`` requests at once, refilled at ``rate_per_s``.

    ``check`` only looks (callable before the request is authenticated, so a forged key id
    spends nothing of the real key's bucket); ``take`` spends, after the signature verified.
    Buckets that have refilled completely are forgotten, so memory follows the active keys.
    """

    def __init__(self, *, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at monotonic time)
        self._lock = threading.Lock()

    def _tokens(self, key_id: str, now: float) -> float:
        tokens, at = self._buckets.get(key_id, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._rate)

    def check(self, key_id: str, *, now: float) -> None:
        """Raise RateLimited if ``key_id`` has no request left now."""
        with self._lock:
            tokens = self._tokens(key_id, now)
        if tokens < 1.0:
            raise RateLimited(key_id, (1.0 - tokens) / self._rate)

    def take(self, key_id: str, *, now: float) -> None:
        """Spend one request of ``key_id``'s, or raise RateLimited."""
        with self._lock:
            tokens = self._tokens(key_id, now)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                raise RateLimited(key_id, (1.0 - tokens) / self._rate)
            self._buckets[key_id] = (tokens - 1.0, now)
            if len(self._buckets) > 4096:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self._rate >= self._burst]
        for key_id in full:
            del self._buckets[key_id]
