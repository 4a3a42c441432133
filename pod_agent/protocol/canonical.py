"""Canonical JSON: the one byte encoding that signatures cover, and strict JSON parsing.

Owns ``canonical_json`` (what gets signed), ``parse_json`` (what gets read off the
wire), the content hashes built on them (``source_sha256``, ``spec_sha256``) and the
one builder of a ``ModelRef`` from a model file (``model_from_file``), so that a
modeller's task, a local fit and a pod's check hash a model the same way. Signing
itself is in ``signing.py``.

The encoding: UTF-8, object keys sorted by code point, no insignificant whitespace,
non-ASCII characters written as themselves (no ``\\u`` escapes except the control
characters JSON requires), integers as integers, floats as Python's shortest
round-tripping repr. NaN and the infinities are refused: they are not JSON.

Unicode: every string (keys and values) is normalised to NFC before encoding, so a
sender that produced NFD text and one that produced NFC text sign the same bytes.
Any valid Unicode is accepted; lone surrogates cannot be encoded as UTF-8 and are
refused. Two keys of one object that become equal after NFC are refused (they would
otherwise collapse silently). Because the signed bytes are NFC, a receiver parses
what was signed (``open_envelope`` re-reads the canonical bytes), never the raw form.

A model's source hash is over the NFC-normalised UTF-8 text (``source_sha256``), so
it stays equal across the normalisation the envelope applies; a declarative spec's
hash is over its canonical JSON (``spec_sha256``).
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pod_agent.errors import ProtocolError
from pod_agent.protocol.messages import ModelRef, ModelStyle

# Deeper nesting than any task needs; bounds recursion on hostile input.
MAX_JSON_DEPTH = 64


def _normalise(value: object, depth: int) -> object:
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels: flatten the message")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"JSON cannot carry the float {value!r}: send a finite number")
        return value
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"JSON object key {key!r} is not a string: use string keys")
            nkey = unicodedata.normalize("NFC", key)
            if nkey in out:
                raise ProtocolError(f"JSON object has key {nkey!r} twice after NFC normalisation: keep one")
            out[nkey] = _normalise(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_normalise(item, depth + 1) for item in value]
    raise ProtocolError(f"cannot encode {type(value).__name__} as canonical JSON: convert it to str, int or a dict")


def canonical_json(obj: object) -> bytes:
    """Encode ``obj`` (JSON values or a pydantic model) as canonical UTF-8 JSON bytes."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    try:
        text = json.dumps(
            _normalise(obj, 0),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ProtocolError(f"cannot encode value as canonical JSON: {exc}") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"string holds a lone surrogate at {exc.start}: send valid Unicode") from exc


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # a literal too large for a double, e.g. 1e999
        raise ProtocolError(f"JSON holds the number {literal[:20]}, too large for a float: send a finite number")
    return value


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"JSON holds {name}: send a finite number")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ProtocolError(f"JSON object has key {key!r} twice: keep one")
        out[key] = value
    return out


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no NaN/Infinity, bounded depth."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(
            text, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not UTF-8 (byte {exc.start}): send UTF-8 JSON") from exc
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise ProtocolError("JSON nested too deeply: flatten the message") from exc
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ProtocolError(f"message holds an unreadable JSON value: {exc}") from exc
    # Re-check depth and keys the same way the encoder does, unless the text shows it needless: ASCII without
    # \u escapes (every string and key is NFC as it stands), with no more containers than the depth limit
    # (floats were checked as parsed). A pod reads each pushed task, ~3 kB, so; the walk cost more than the parse.
    if not (text.isascii() and "\\u" not in text and text.count("{") + text.count("[") <= MAX_JSON_DEPTH):
        _normalise(value, 0)
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_sha256(source: str) -> str:
    """sha256 hex of model source text as a task pins it: NFC-normalised, UTF-8."""
    try:
        return sha256_hex(unicodedata.normalize("NFC", source).encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"model source holds a lone surrogate at {exc.start}: save it as UTF-8") from exc


def spec_sha256(spec: object) -> str:
    """sha256 hex of a declarative model spec: over its canonical JSON."""
    return sha256_hex(canonical_json(spec))


def model_from_file(path: Path, *, style: ModelStyle, class_name: str | None, name: str | None = None) -> ModelRef:
    """A ModelRef carrying the file's source (or declarative spec) pinned by the hash a pod checks.

    Source is pinned by ``source_sha256``, a spec by ``spec_sha256`` of the parsed JSON (not of the
    file's bytes, whose whitespace and key order the pod never sees). ``name`` defaults to the file's stem.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"model file {path} cannot be read as UTF-8 text: {exc}") from exc
    label = name or path.stem
    if style == "declarative":
        try:
            spec = parse_json(text)
        except ProtocolError as exc:
            raise ProtocolError(f"declarative model {path} is not JSON: {exc}") from exc
        if not isinstance(spec, dict):
            raise ProtocolError(f"declarative model {path} is not a JSON object: write the spec as {{...}}")
        return ModelRef(style=style, name=label, spec=spec, sha256=spec_sha256(spec))
    if not class_name:
        raise ProtocolError(f"model style {style!r} needs the model's class name in {path} (--class, or class_name=)")
    return ModelRef(style=style, name=label, class_name=class_name, source=text, sha256=source_sha256(text))
