"""Attack: answer with JSON nested far past the parser's recursion limit, in the frame header
(``request["where"] == "header"``) or in the result's safetensors header (``"payload"``)."""

import struct

_DEPTH = 200_000  # 400 KB: under every byte cap, far over any recursion limit


def run(channel):
    nested = b"[" * _DEPTH + b"]" * _DEPTH
    if channel.request()["where"] == "header":
        header = b'{"type":"progress","event":' + nested + b"}"
        channel._out.write(struct.pack(">II", len(header), 0) + header)
        channel._out.flush()
        return None
    table = b'{"w":' + nested + b"}"
    channel.result({"nested": True}, struct.pack("<Q", len(table)) + table)
    return None
