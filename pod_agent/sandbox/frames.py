"""Length-prefixed frames between the agent and the confined worker.

Owns the wire format of the pipes: an 8-byte prefix (u32 header length, u32
payload length, big-endian), a UTF-8 JSON object header with a string
``type``, then raw payload bytes (safetensors for tensors). Every frame is
checked against a cap before a byte of it is buffered, JSON nested past the
parser's depth is a ``bad_frame``/``bad_payload`` like any other malformed
header, and nothing read is ever unpickled or evaluated. Also owns the structural check that a result
payload is a well-formed safetensors blob. The runner decides which frame
types are legal when; this module only reads and writes them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from pod_agent.errors import SandboxError

if TYPE_CHECKING:
    # Only the agent side reads asynchronously; workers never pay for importing asyncio.
    import asyncio

_PREFIX = struct.Struct(">II")
# A worker's header carries a type, a reason code, metrics or a progress event: never bulk data.
MAX_HEADER_BYTES = 1 << 20
# The agent's request carries the whole signed task (model source included), so it may be larger.
MAX_REQUEST_HEADER_BYTES = 64 << 20
# Only a result carries bulk bytes (safetensors); every other frame is header-only.
PAYLOAD_TYPES = frozenset({"result"})
# u32 payload length: safetensors results above 4 GiB are refused by construction.
MAX_PAYLOAD_BYTES_LIMIT = (1 << 32) - 1
# Bytes per element of each safetensors dtype; a result tensor of any other dtype is refused.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its JSON header (``type`` always present) and payload."""

    header: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.header["type"])


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Encode a frame; the header must be a JSON object with a string ``type``."""
    if not isinstance(header.get("type"), str):
        raise SandboxError("bad_frame", f"frame header needs a string 'type', got {header.get('type')!r}")
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > MAX_REQUEST_HEADER_BYTES:
        raise SandboxError("frame_too_large", f"header of {len(raw)} bytes exceeds {MAX_REQUEST_HEADER_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES_LIMIT:
        raise SandboxError("frame_too_large", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES_LIMIT}")
    return _PREFIX.pack(len(raw), len(payload)) + raw + payload


def _check_prefix(prefix: bytes, *, max_payload_bytes: int, max_header_bytes: int) -> tuple[int, int]:
    header_len, payload_len = _PREFIX.unpack(prefix)
    if header_len == 0 or header_len > max_header_bytes:
        raise SandboxError("frame_too_large", f"frame header of {header_len} bytes (cap {max_header_bytes})")
    if payload_len > max_payload_bytes:
        raise SandboxError("frame_too_large", f"frame payload of {payload_len} bytes (cap {max_payload_bytes})")
    return header_len, payload_len


def _decode_header(raw: bytes) -> dict[str, Any]:
    def _no_constants(name: str) -> Any:
        raise ValueError(f"non-finite number {name}")

    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SandboxError("bad_frame", f"frame header is not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        # A header within the byte cap can still nest deeper than the parser's stack allows.
        raise SandboxError("bad_frame", "frame header nests JSON deeper than Python's recursion limit") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise SandboxError("bad_frame", "frame header must be a JSON object with a string 'type'")
    return header


async def read_frame_async(reader: asyncio.StreamReader, *, max_payload_bytes: int) -> Frame | None:
    """Read one frame; None on clean EOF before a frame starts. Raises SandboxError otherwise.

    Only frames whose type is in ``PAYLOAD_TYPES`` may carry a payload; the header is read
    (and checked) before a byte of payload is buffered.
    """
    import asyncio

    try:
        prefix = await reader.readexactly(_PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise SandboxError("bad_frame", "stream ended inside a frame prefix") from exc
    header_len, payload_len = _check_prefix(prefix, max_payload_bytes=max_payload_bytes,
                                            max_header_bytes=MAX_HEADER_BYTES)
    try:
        header = _decode_header(await reader.readexactly(header_len))
        if payload_len and header["type"] not in PAYLOAD_TYPES:
            raise SandboxError("bad_frame", f"a {str(header['type'])[:32]!r} frame may not carry a payload")
        payload = await reader.readexactly(payload_len) if payload_len else b""
    except asyncio.IncompleteReadError as exc:
        raise SandboxError("bad_frame", "stream ended inside a frame") from exc
    return Frame(header, payload)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO, *, max_payload_bytes: int) -> Frame | None:
    """Blocking twin of :func:`read_frame_async`, used inside the worker (for the agent's frames)."""
    prefix = _read_exactly(stream, _PREFIX.size)
    if not prefix:
        return None
    if len(prefix) != _PREFIX.size:
        raise SandboxError("bad_frame", "stream ended inside a frame prefix")
    header_len, payload_len = _check_prefix(prefix, max_payload_bytes=max_payload_bytes,
                                            max_header_bytes=MAX_REQUEST_HEADER_BYTES)
    raw = _read_exactly(stream, header_len)
    payload = _read_exactly(stream, payload_len)
    if len(raw) != header_len or len(payload) != payload_len:
        raise SandboxError("bad_frame", "stream ended inside a frame")
    return Frame(_decode_header(raw), payload)


def check_safetensors(payload: bytes) -> dict[str, dict[str, Any]]:
    """Check that ``payload`` is a well-formed safetensors blob; return its tensor table.

    Structure only (header JSON, known dtypes, offsets tiling the data exactly);
    names, shapes and values are the training contract's business.
    """
    if len(payload) < 8:
        raise SandboxError("bad_payload", f"result payload of {len(payload)} bytes is not safetensors")
    (header_len,) = struct.unpack("<Q", payload[:8])
    if header_len > min(len(payload) - 8, MAX_HEADER_BYTES * 16):
        raise SandboxError("bad_payload", f"safetensors header length {header_len} is out of range")
    try:
        table = json.loads(payload[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SandboxError("bad_payload", "safetensors header is not UTF-8 JSON") from exc
    except RecursionError as exc:
        raise SandboxError("bad_payload", "safetensors header nests JSON deeper than Python's recursion limit") from exc
    if not isinstance(table, dict):
        raise SandboxError("bad_payload", "safetensors header is not a JSON object")
    data_len = len(payload) - 8 - header_len
    tensors: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int]] = []
    for name, spec in table.items():
        if name == "__metadata__":
            continue
        # A str check first: the header is the model's JSON, and an unhashable dtype (a list) would
        # raise TypeError from the lookup instead of being refused.
        if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str) or spec["dtype"] not in _DTYPE_BYTES:
            raise SandboxError("bad_payload", f"tensor {name!r} has no known dtype")
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise SandboxError("bad_payload", f"tensor {name!r} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise SandboxError("bad_payload", f"tensor {name!r} has malformed data_offsets")
        begin, end = offsets
        count = 1
        for d in shape:
            count *= d
        if not 0 <= begin <= end <= data_len or end - begin != count * _DTYPE_BYTES[spec["dtype"]]:
            raise SandboxError("bad_payload", f"tensor {name!r} offsets do not match its shape and dtype")
        spans.append((begin, end))
        tensors[name] = {"dtype": spec["dtype"], "shape": shape}
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise SandboxError("bad_payload", "safetensors data has gaps or overlapping tensors")
        position = end
    if position != data_len:
        raise SandboxError("bad_payload", "safetensors data has trailing bytes")
    return tensors


__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_REQUEST_HEADER_BYTES",
    "Frame",
    "check_safetensors",
    "encode_frame",
    "read_frame",
    "read_frame_async",
]
