"""Canonical JSON: the exact bytes, stability across key order and Unicode forms, refusals."""

from __future__ import annotations

import json
import random
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pod_agent.errors import ProtocolError
from pod_agent.protocol import canonical_json, parse_json, source_sha256, spec_sha256
from pod_agent.protocol.messages import Split


def test_encoding_sorts_keys_drops_whitespace_and_writes_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1, "é", None, True, 1.5]}) == '{"a":[1,"é",null,true,1.5],"b":1}'.encode()


def test_pydantic_models_encode_as_their_json_dump() -> None:
    assert canonical_json(Split()) == b'{"seed":0,"test":10,"train":80,"validation":10}'


def test_nfd_and_nfc_strings_encode_to_the_same_bytes() -> None:
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert canonical_json({nfd: [nfd]}) == canonical_json({nfc: [nfc]}) == '{"café":["café"]}'.encode()


def test_compatibility_forms_are_kept_distinct() -> None:
    # NFC, not NFKC: a ligature is a different string from its letters.
    assert canonical_json("\ufb01") != canonical_json("fi")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused(value: float) -> None:
    with pytest.raises(ProtocolError, match="finite"):
        canonical_json({"x": [value]})


def test_keys_that_collide_after_normalisation_are_refused() -> None:
    with pytest.raises(ProtocolError, match="twice after NFC"):
        canonical_json({"caf\u00e9": 1, "cafe\u0301": 2})


@pytest.mark.parametrize(
    "value", [{1: "a"}, {"a": b"bytes"}, {"a": {1, 2}}, object()], ids=["int-key", "bytes", "set", "object"]
)
def test_values_json_cannot_carry_are_refused(value: Any) -> None:
    with pytest.raises(ProtocolError, match="string keys|cannot encode"):
        canonical_json(value)


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(ProtocolError, match="surrogate"):
        canonical_json({"a": "\ud800"})


def test_nesting_beyond_the_depth_limit_is_refused() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ProtocolError, match="deeper"):
        canonical_json(deep)


@pytest.mark.parametrize(
    ("raw", "match"),
    [(b'{"a":1,"a":2}', "twice"), (b'{"a":NaN}', "NaN"), (b'[Infinity]', "Infinity"), (b"\xc3(", "not UTF-8"),
     (b"{", "not JSON"), (b"[" * 50_000, "not JSON|too deeply|deeper"), (b"1" * 5000, "unreadable"),
     (b"[" * 65 + b"1" + b"]" * 65, "deeper than 64"), (b'{"x":[1e999]}', "1e999, too large for a float"),
     (rb'{"\u0065\u0301":1,"\u00e9":2}', "twice after NFC")],
    ids=["duplicate", "nan", "infinity", "utf8", "truncated", "deep", "huge-int", "just-too-deep", "huge-float",
         "escaped-nfc-twin"],
)
def test_strict_parser_refuses_what_canonical_json_cannot_mean(raw: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_json(raw)


def test_source_hash_is_over_nfc_utf8_text() -> None:
    import hashlib

    assert source_sha256("cafe\u0301") == hashlib.sha256("caf\u00e9".encode()).hexdigest()


def test_spec_hash_ignores_key_order() -> None:
    assert spec_sha256({"a": 1, "b": [1, 2]}) == spec_sha256({"b": [1, 2], "a": 1})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


def _nfd(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFD", value)
    if isinstance(value, dict):
        return {unicodedata.normalize("NFD", k): _nfd(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nfd(v) for v in value]
    return value


def _no_nfc_key_collisions(value: Any) -> bool:
    try:
        canonical_json(value)
    except ProtocolError:
        return False
    return True


@settings(max_examples=200, deadline=None, database=None)
@given(json_values.filter(_no_nfc_key_collisions), st.randoms())
def test_encoding_is_stable_across_key_order_normal_form_and_reparsing(value: Any, rng: random.Random) -> None:
    encoded = canonical_json(value)
    assert canonical_json(_shuffled(value, rng)) == encoded
    assert canonical_json(_nfd(value)) == encoded
    assert canonical_json(parse_json(encoded)) == encoded
    assert canonical_json(json.loads(encoded)) == encoded
