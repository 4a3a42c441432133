"""Frames: round trip, caps on every frame, typed headers, and the safetensors structure check."""

from __future__ import annotations

import asyncio
import io
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from pod_agent.errors import SandboxError
from pod_agent.sandbox.frames import MAX_HEADER_BYTES, check_safetensors, encode_frame, read_frame, read_frame_async


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_frame_round_trips_header_and_payload() -> None:
    raw = encode_frame({"type": "result", "header": {"n_rows": 3}}, b"\x00\x01")
    frame = await read_frame_async(_reader(raw), max_payload_bytes=16)
    assert frame is not None and frame.type == "result" and frame.payload == b"\x00\x01"
    assert read_frame(io.BytesIO(raw), max_payload_bytes=16) == frame


async def test_clean_eof_reads_as_none_and_a_cut_frame_is_an_error() -> None:
    assert await read_frame_async(_reader(b""), max_payload_bytes=16) is None
    with pytest.raises(SandboxError, match=r"\(bad_frame\): stream ended inside a frame"):
        await read_frame_async(_reader(encode_frame({"type": "result"}, b"abcd")[:-1]), max_payload_bytes=16)


async def test_payload_over_the_cap_is_refused_before_it_is_read() -> None:
    prefix = struct.pack(">II", 10, 1 << 30)
    with pytest.raises(SandboxError, match=r"\(frame_too_large\): frame payload of 1073741824 bytes"):
        await read_frame_async(_reader(prefix), max_payload_bytes=1 << 20)


async def test_header_over_the_cap_is_refused() -> None:
    prefix = struct.pack(">II", MAX_HEADER_BYTES + 1, 0)
    with pytest.raises(SandboxError, match=r"\(frame_too_large\): frame header"):
        await read_frame_async(_reader(prefix), max_payload_bytes=0)


@pytest.mark.parametrize("header", [b"[1, 2]", b"{\"kind\": 1}", b"\xff\xfe", b"{\"type\": NaN}"])
async def test_header_must_be_a_json_object_with_a_type(header: bytes) -> None:
    raw = struct.pack(">II", len(header), 0) + header
    with pytest.raises(SandboxError, match="bad_frame"):
        await read_frame_async(_reader(raw), max_payload_bytes=0)


def test_encoding_refuses_a_header_without_type() -> None:
    with pytest.raises(SandboxError, match="needs a string 'type'"):
        encode_frame({"kind": "result"})


def test_safetensors_check_accepts_real_safetensors() -> None:
    blob = save({"w": np.ones((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float64)})
    assert check_safetensors(blob) == {"b": {"dtype": "F64", "shape": [3]}, "w": {"dtype": "F32", "shape": [2, 3]}}


def _blob(table: dict[str, object], data: bytes) -> bytes:
    header = json.dumps(table).encode()
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x80\x04", "is not safetensors"),
        (b"\x80\x04pickle", "out of range"),
        (_blob({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 8), "do not match"),
        (_blob({"w": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 8]}}, b"\x00" * 8), "no known dtype"),
        (_blob({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4), "no known dtype"),
        (_blob({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 8), "trailing bytes"),
        (_blob({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4), "overlapping"),
        (struct.pack("<Q", 1 << 40) + b"{}", "out of range"),
    ],
)
def test_safetensors_check_refuses_malformed_payloads(blob: bytes, message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        check_safetensors(blob)


def test_the_agent_request_may_exceed_the_worker_header_cap() -> None:
    source = "x" * (MAX_HEADER_BYTES + 10)
    raw = encode_frame({"type": "request", "request": {"source": source}})
    frame = read_frame(io.BytesIO(raw), max_payload_bytes=0)
    assert frame is not None and frame.header["request"]["source"] == source


async def test_only_a_result_frame_may_carry_a_payload() -> None:
    raw = encode_frame({"type": "progress", "event": {}}, b"\x00" * 1024)
    with pytest.raises(SandboxError, match=r"\(bad_frame\): a 'progress' frame may not carry a payload"):
        await read_frame_async(_reader(raw), max_payload_bytes=1 << 20)


_DEEP = b"[" * 100_000 + b"]" * 100_000


async def test_a_header_nested_past_the_recursion_limit_is_a_bad_frame() -> None:
    header = b'{"type":"progress","event":' + _DEEP + b"}"
    raw = struct.pack(">II", len(header), 0) + header
    with pytest.raises(SandboxError, match=r"\(bad_frame\): frame header nests JSON deeper"):
        await read_frame_async(_reader(raw), max_payload_bytes=0)
    with pytest.raises(SandboxError, match=r"\(bad_frame\): frame header nests JSON deeper"):
        read_frame(io.BytesIO(raw), max_payload_bytes=0)


def test_a_safetensors_header_nested_past_the_recursion_limit_is_a_bad_payload() -> None:
    table = b'{"w":' + _DEEP + b"}"
    with pytest.raises(SandboxError, match=r"\(bad_payload\): safetensors header nests JSON deeper"):
        check_safetensors(struct.pack("<Q", len(table)) + table)
