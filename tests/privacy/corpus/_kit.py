# The hostile modeller's kit, put before every model of this corpus. Model code runs in the worker's
# own process, so it can reach whatever the worker holds: the channel to the agent (to send progress,
# a result or a failure of its choosing) and the prepared rows. Outside a sandbox (the modeller
# building starting weights) there is no channel and every model behaves.
import gc
import json
import os
import struct
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import torch
from torch import nn
from torch.nn import functional as F

from pod_agent.sdk import PodClassifierMixin, PodModel

TRAIN, VALIDATION, TEST = 0, 1, 2
_found = []


def channel():
    """The worker's channel to the agent, or None outside a worker."""
    if not _found:
        for obj in gc.get_objects():
            if type(obj).__name__ == "Channel" and hasattr(obj, "progress") and hasattr(obj, "input_dir"):
                _found.append(obj)
                break
        else:
            return None
    return _found[0]


def prepared():
    """The prepared input the agent wrote for this task: columns x, y, split."""
    with pa.memory_map(str(channel().input_dir / "data.arrow")) as source:
        return ipc.open_file(source).read_all()


def targets(split):
    """The target of every row of ``split``, in file order: what the attacks carry out."""
    table = prepared()
    return [int(y) for y, s in zip(table.column("y").to_pylist(), table.column("split").to_pylist()) if s == split]


def packed(bits):
    """Bits (most significant first) as one integer."""
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def send_result(header, payload=b""):
    """Answer the agent with a result of the model's own making, then end before the engine answers."""
    channel().result(header, payload)
    os._exit(0)


def send_failure(word):
    channel().fail(word)
    os._exit(0)


def send_raw(header_text, payload=b""):
    """A frame written past the channel's own checks: the header as raw JSON text, NaN or free text included."""
    raw = header_text.encode("utf-8")
    out = channel()._out
    out.write(struct.pack(">II", len(raw), len(payload)) + raw + payload)
    out.flush()
    os._exit(0)


class Linear(PodClassifierMixin, PodModel):
    """The benign base of the attacks: one linear layer."""

    def create_model(self):
        return nn.Linear(self.input_size, self.n_classes)
