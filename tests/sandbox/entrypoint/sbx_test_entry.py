"""Test entry for the sandbox corpus: runs ``model.py`` from the input dir.

Stands in for training.worker in tests/sandbox: ``serve`` exec's the model
source, calls its ``run(channel)`` and, when that returns a dict of numpy
arrays, sends them as safetensors with ``{"returned": ...}`` extras.
"""

from __future__ import annotations

from typing import Any


def prepare() -> None:
    """Nothing heavy: the corpus must stay fast (only the benign model imports torch)."""


def serve(channel: Any) -> None:
    source = (channel.input_dir / "model.py").read_text()
    namespace: dict[str, Any] = {"__name__": "model"}
    exec(compile(source, "model.py", "exec"), namespace)
    returned = namespace["run"](channel)
    if channel.finished:
        return
    if returned is None:
        channel.result({"returned": None}, b"")
        return
    header, arrays = returned
    payload = b""
    if arrays:
        from safetensors.numpy import save

        payload = save(arrays)
    channel.result(header, payload)
