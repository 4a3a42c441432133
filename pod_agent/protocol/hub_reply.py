"""How a hub's reply is judged, whatever carried it: shared by ``hubhttp`` (aiohttp) and ``hub_oneshot``.

Owns the typed failures a reply maps to (``raise_for_status``: ``HubUnavailable`` for 5xx and 429,
``HubRejected`` for other 4xx, ``HubMisbehaved`` for a redirect), the body caps as they are
counted (``check_declared``, ``check_received``), and parsing a body against its ``hub_api`` model
(``parse_reply``: a bounded number of JSON values, strict JSON, field names but never the hub's
values in a message). Nothing here opens a connection or imports aiohttp, so a short-lived caller
(the modeller's CLI) pays for neither.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from pod_agent.errors import HubMisbehaved, HubRejected, HubUnavailable, ProtocolError
from pod_agent.protocol.canonical import parse_json
from pod_agent.protocol.hub_api import MAX_REPLY_VALUES

# An error reply is only quoted to the operator; past this much it is cut, not read further.
MAX_ERROR_BYTES = 64 * 1024
# How many validation errors of a wrongly shaped reply are named in the message (the rest are counted).
_MAX_NAMED_ERRORS = 3
TOO_MANY_REQUESTS = 429

# A JSON string with its escapes; possessive, so that matching a long one keeps no backtracking state
# (a plain `(?:...)*` holds some per repetition: 480 MiB for 8 MiB of escapes).
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')
_T = TypeVar("_T")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a URL's host part) is this machine: plain http is allowed only there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_declared(declared: int | None, *, max_bytes: int, what: str) -> None:
    """HubMisbehaved when a reply's Content-Length is over its cap: refused before reading (only an early
    refusal: what arrives is counted all the same)."""
    if declared is not None and declared > max_bytes:
        raise HubMisbehaved(f"hub's {what} declares {declared} bytes, over the {max_bytes}-byte cap")


def check_received(received: int, *, max_bytes: int, what: str) -> None:
    """HubMisbehaved as soon as what arrived of a reply passes its cap."""
    if received > max_bytes:
        raise HubMisbehaved(f"hub's {what} runs past the {max_bytes}-byte cap")


def parse_reply(raw: bytes | str, validate: Callable[[Any], _T], *, name: str, what: str) -> _T:
    """``raw`` as strict JSON (``{}`` when empty) passed through ``validate``, the model ``name``'s validator;
    HubMisbehaved (naming fields, never values) when it holds too many values, is not UTF-8, too deep, or
    not of that model."""
    # Each value past the first takes a separator byte (a character of a str): a reply no longer than the
    # limit cannot hold more, and is not scanned (a pushed task, ~3 kB, is scanned by every pod for nothing).
    if len(raw) > MAX_REPLY_VALUES and _more_values_than(
        raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw, MAX_REPLY_VALUES
    ):
        raise HubMisbehaved(f"hub's {what} holds more than {MAX_REPLY_VALUES} JSON values")
    try:
        return validate(parse_json(raw) if raw else {})
    except ProtocolError as exc:
        raise HubMisbehaved(f"hub's {what} is not usable JSON: {exc}") from exc
    except ValidationError as exc:
        raise HubMisbehaved(f"hub's {what} is not a {name}: {_validation_summary(exc)}") from exc


def _more_values_than(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` holds more than ``limit`` JSON values, near enough: container openings and separators
    outside strings (an unterminated string is counted through: it over-counts only what cannot parse).

    Strings are skipped match by match, never copied out; each separator counted lets at most two more
    strings through, so the loop stops within about 2 * ``limit`` matches however the reply is made."""
    count, start = 0, 0
    for match in _JSON_STRING.finditer(raw):
        count += _separators(raw, start, match.start())
        if count > limit:
            return True
        start = match.end()
    return count + _separators(raw, start, len(raw)) > limit


def _separators(raw: bytes, start: int, end: int) -> int:
    return raw.count(b",", start, end) + raw.count(b"{", start, end) + raw.count(b"[", start, end)


def _validation_summary(exc: ValidationError) -> str:
    """Where and why, without the values: a hostile hub's text does not reach the operator's log."""
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or '<reply>'}: {error['type']}"
        for error in exc.errors(include_url=False, include_input=False)[:_MAX_NAMED_ERRORS]
    ]
    more = exc.error_count() - _MAX_NAMED_ERRORS
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


TOO_MANY_REQUESTS = 429


def raise_for_status(status: int, text: str, *, what: str) -> None:
    """HubUnavailable for 5xx and 429, HubRejected for other 4xx, HubMisbehaved for 3xx (a hub never redirects;
    following one would send the signed request elsewhere): "hub answered <status> <what>: <the hub's error>".

    429 (over the hub's per-key rate) is retried like an outage, through the caller's backoff: the same
    request succeeds later, so treating it as a refusal would drop an acknowledgement or a result."""
    if status < 300:
        return
    if status < 400:
        raise HubMisbehaved(f"hub answered {status} {what}, a redirect: not followed", status=status)
    try:
        detail = str(parse_json(text)["error"])[:200]
    except (ProtocolError, KeyError, TypeError):
        detail = text[:200]
    message = f"hub answered {status} {what}: {detail}"
    if status >= 500 or status == TOO_MANY_REQUESTS:
        raise HubUnavailable(message, status=status)
    raise HubRejected(message, status=status)
