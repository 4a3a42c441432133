"""The typed messages across the sandbox wall: the agent's request, the worker's answers.

Owns the shape of what ``training.worker`` receives (:class:`WorkerRequest`, built by
the agent) and what it sends back (:class:`WorkerResultHeader` with the result's
safetensors payload, :class:`WorkerProgress` while it trains). The frames that carry
them are ``sandbox.frames``' business; what a parsed header may still not contain
(metric names, tensor names and shapes, dtypes, values) is ``contract.py``'s.

Everything the worker sends is untrusted: the models are frozen, refuse unknown keys
and are strict (no "3" for 3, no true for 1.0), so a parse either yields exactly
these fields or fails. Torch-free (pydantic and the wire models only): the daemon
imports it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pod_agent.protocol import TaskPayload

_Count = Annotated[int, Field(ge=0)]


class _WallModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TrainerSettings(_WallModel):
    """The pod's Trainer choices; ``seed`` None is the task's seed, ``threads`` None the engine's default."""

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | Literal["auto"] = 1
    seed: int | None = None
    threads: Annotated[int, Field(ge=1)] | None = None


class WorkerPrivacy(_WallModel):
    """The part of the owner's privacy floor the worker itself applies (predict refuses a small split)."""

    min_rows: Annotated[int, Field(ge=1)]


class WorkerRequest(_WallModel):
    """Agent -> worker: the verified task and what the pod decided about running it.

    ``datastructure`` None: the worker reads it from the prepared input's metadata.
    ``public_schema`` is the schema as registered with the hub (``Schema.public``).
    """

    task: TaskPayload
    datastructure: dict[str, Any] | None = None
    trainer: TrainerSettings = TrainerSettings()
    privacy: WorkerPrivacy
    public_schema: dict[str, Any] = {}


class TensorDescription(_WallModel):
    """One tensor of the payload as the header describes it (safetensors' dtype names)."""

    shape: list[_Count]
    dtype: str


class WorkerResultHeader(_WallModel):
    """Worker -> agent, with a result: metrics, the rows it used and its tensor table."""

    metrics: dict[str, float]
    n_rows: _Count
    tensors: dict[str, TensorDescription]


class WorkerProgress(_WallModel):
    """Worker -> agent, while it runs; the agent builds the hub's ProgressEvent from these fields only.

    Only the stages inside the worker: the agent alone says preparing, uploading, done or failed.
    """

    stage: Literal["training", "validating"]
    epoch: _Count | None = None
    step: _Count | None = None
    loss: Annotated[float, Field(allow_inf_nan=False)] | None = None


def parse_progress(raw: object) -> WorkerProgress | None:
    """``raw`` (a progress event as the worker sent it) as a WorkerProgress; None when malformed."""
    try:
        return WorkerProgress.model_validate(raw)
    except ValidationError:
        return None
