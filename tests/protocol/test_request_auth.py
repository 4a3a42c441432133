"""HTTP request signatures for the hub: what they cover, the clock window, replays, the bounded cache."""

from __future__ import annotations

import pytest

from pod_agent.errors import ProtocolError
from pod_agent.protocol import (
    MAX_REQUEST_SKEW_S,
    IdentityKey,
    PublicKey,
    RequestReplayCache,
    sign_request,
    verify_request,
)
from pod_agent.protocol.request_auth import MAX_REQUEST_FUTURE_SKEW_S

KEY = IdentityKey.generate()
NOW = 1_700_000_000
BODY = b'{"hello":"hub"}'


def _lookup(key_id: str) -> PublicKey | None:
    return KEY.public if key_id == KEY.key_id else None


def _verify(headers: dict[str, str], *, method: str = "POST", path: str = "/v1/tasks?pod=a", body: bytes = BODY,
            now: int = NOW, replay: RequestReplayCache | None = None) -> str:
    return verify_request(headers, method, path, body, lookup=_lookup, replay=replay or RequestReplayCache(), now=now)


def _signed(**kw: object) -> dict[str, str]:
    return sign_request(KEY, "post", "/v1/tasks?pod=a", BODY, now=int(str(kw.get("now", NOW))))


def test_signed_request_verifies_to_its_key_id() -> None:
    assert _verify(_signed()) == KEY.key_id


def test_header_names_are_matched_case_insensitively() -> None:
    assert _verify({k.lower(): v for k, v in _signed().items()}) == KEY.key_id


@pytest.mark.parametrize(
    ("change", "match"),
    [({"method": "PUT"}, "does not verify"), ({"path": "/v1/tasks?pod=b"}, "does not verify"),
     ({"path": "/v1/tasks"}, "does not verify"), ({"body": BODY + b" "}, "body does not match")],
    ids=["method", "query", "path", "body"],
)
def test_request_changed_after_signing_is_refused(change: dict[str, object], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        _verify(_signed(), **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["X-Pod-Timestamp", "X-Pod-Nonce", "X-Pod-Content-Sha256"])
def test_rewritten_signed_header_is_refused(header: str) -> None:
    headers = _signed()
    if header == "X-Pod-Timestamp":
        headers[header] = str(NOW + 1)
    elif header == "X-Pod-Nonce":
        headers[header] = "0" * 32
    else:
        headers[header] = "0" * 64
    with pytest.raises(ProtocolError, match="does not verify|body does not match"):
        _verify(headers)


@pytest.mark.parametrize("offset", [MAX_REQUEST_FUTURE_SKEW_S + 1, -(MAX_REQUEST_SKEW_S + 1), MAX_REQUEST_SKEW_S])
def test_request_outside_the_clock_window_is_refused(offset: int) -> None:
    with pytest.raises(ProtocolError, match="synchronise the clock"):
        _verify(_signed(now=NOW + offset))


@pytest.mark.parametrize("offset", [MAX_REQUEST_FUTURE_SKEW_S, -MAX_REQUEST_SKEW_S])
def test_request_at_the_edge_of_the_window_is_accepted(offset: int) -> None:
    assert _verify(_signed(now=NOW + offset)) == KEY.key_id


def test_replayed_request_is_refused() -> None:
    cache = RequestReplayCache()
    headers = _signed()
    _verify(headers, replay=cache)
    with pytest.raises(ProtocolError, match="already used"):
        _verify(headers, replay=cache, now=NOW + 10)


def test_request_from_an_unregistered_key_is_refused() -> None:
    with pytest.raises(ProtocolError, match="not registered"):
        _verify(sign_request(IdentityKey.generate(), "POST", "/v1/tasks?pod=a", BODY, now=NOW))


def test_missing_header_is_refused_naming_it() -> None:
    headers = _signed()
    del headers["X-Pod-Signature"]
    with pytest.raises(ProtocolError, match="lacks header X-Pod-Signature"):
        _verify(headers)


def test_unverified_requests_do_not_fill_the_replay_cache() -> None:
    cache = RequestReplayCache()
    headers = _signed()
    with pytest.raises(ProtocolError):
        _verify(headers, replay=cache, method="GET")
    assert cache.size == 0


def test_replay_cache_forgets_entries_older_than_the_window() -> None:
    cache = RequestReplayCache(window_s=300)
    cache.check_and_add("k", "n1", timestamp=NOW, now=NOW)
    cache.check_and_add("k", "n2", timestamp=NOW + 700, now=NOW + 700)
    assert cache.size == 1


def test_a_key_over_its_quota_loses_its_own_oldest_entries_and_only_its_own_floor_rises() -> None:
    cache = RequestReplayCache(max_entries_per_key=3)
    cache.check_and_add("other", "o0", timestamp=NOW, now=NOW)
    for i in range(3):
        cache.check_and_add("k", f"n{i}", timestamp=NOW + i, now=NOW + 3)
    cache.check_and_add("k", "n3", timestamp=NOW + 3, now=NOW + 3)  # evicts n0 (t=NOW)
    assert cache.held_by("k") == 3 and cache.floor("k") == NOW and cache.floor("other") == -1
    with pytest.raises(ProtocolError, match="too old for the replay cache"):
        cache.check_and_add("k", "n0", timestamp=NOW, now=NOW + 3)  # n0 again: refused, not forgotten
    with pytest.raises(ProtocolError, match="already used"):
        cache.check_and_add("k", "n3", timestamp=NOW + 3, now=NOW + 3)
    cache.check_and_add("other", "o1", timestamp=NOW, now=NOW + 3)  # another key at the same second still passes


def test_a_full_cache_sheds_the_largest_holder_not_the_others() -> None:
    cache = RequestReplayCache(max_entries=100, max_entries_per_key=100)
    cache.check_and_add("honest", "h0", timestamp=NOW - 200, now=NOW)
    for i in range(300):
        cache.check_and_add("flood", f"{i:032x}", timestamp=NOW - 270 + i, now=NOW)
    assert cache.size <= 100 and cache.floor("honest") == -1 and cache.floor("flood") > NOW - 270
    with pytest.raises(ProtocolError, match="too old for the replay cache"):
        cache.check_and_add("flood", "f" * 32, timestamp=NOW - 270, now=NOW)
    with pytest.raises(ProtocolError, match="already used"):
        cache.check_and_add("honest", "h0", timestamp=NOW - 200, now=NOW)
    cache.check_and_add("honest", "h1", timestamp=NOW, now=NOW)


def test_far_future_stamps_never_enter_the_cache() -> None:
    cache = RequestReplayCache()
    with pytest.raises(ProtocolError, match="ahead of the hub's clock"):
        cache.check_and_add("k", "n", timestamp=NOW + 300, now=NOW)
    assert cache.size == 0
