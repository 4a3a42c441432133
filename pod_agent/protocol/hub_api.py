"""The hub's HTTP and WebSocket API as typed models: what each route takes and answers.

Requests (``...Registration``, ``ModelPublication``, ``Refusal``) are parsed strictly by
the hub (unknown fields refused). Replies (``HubReply`` subclasses) are parsed by pods and
modellers, which must not trust the hub: every field is bounded, and unknown fields are
ignored so that a newer hub can add some. Signed payloads (tasks, results, round
messages) travel inside these as envelopes and are checked by their own models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pod_agent.config import ENROLMENT_TOKEN_PATTERN, PodName
from pod_agent.protocol.messages import Code, CohortEntry, CohortProof, Envelope, KeyId, Sha256Hex, WireModel

# A reply or pushed message larger than this is the hub misbehaving; the largest honest one is a
# delivery of a task at the pods' default size cap (security.max_task_bytes, 4 MiB) with room to spare.
MAX_REPLY_BYTES = 8 * 1024 * 1024
# JSON values (counted as container openings and separators outside strings) a reply may hold: parsed, a
# value can cost 30 times its bytes ("{}," is three bytes, a dict 64), so the byte cap alone would let
# 8 MiB of them take 300 MiB. An honest reply's bulk is in strings (envelopes, source), not in values.
MAX_REPLY_VALUES = 1 << 18
# Tasks one long-poll reply may carry; more stay pending at the hub for the next poll.
MAX_TASKS_PER_POLL = 64
MAX_LISTED_PODS = 100_000
# Key rotation statements listed per pod (the newest): a modeller follows a chain from its pin, and a
# pin older than this many rotations is far past every overlap window anyway.
MAX_LISTED_ROTATIONS = 16
# An enrolment token as `pod-agent hub invite` makes it: 32 url-safe base64 characters or more.
EnrolmentToken = Annotated[str, Field(pattern=ENROLMENT_TOKEN_PATTERN)]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]
ModelVersion = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,50}$")]
TaskId = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
PublicKeyB64 = Annotated[str, Field(min_length=1, max_length=100)]


# -- requests (hub parses) ----------------------------------------------------------------------


class PodRegistration(WireModel):
    name: PodName
    public_key: PublicKeyB64
    schema_public: dict[str, Any]
    schema_hash: Sha256Hex
    row_count: int = Field(ge=0)
    sandbox_level: str = Field(max_length=32)
    heartbeat_s: float = Field(gt=0)
    enrolment_token: EnrolmentToken | None = None
    # After `pod-agent keys rotate`: the statement (protocol.rotation) the key the hub holds for this name
    # signed, naming public_key; the hub moves the name to the new key instead of refusing it.
    rotation: Envelope | None = None


class TaskSubmission(WireModel):
    """A modeller's task: the signed envelope and the cohort entries its signed root commits to, from which
    the hub builds each pod's inclusion proof (``cohort.py``); the hub checks they give the signed root."""

    envelope: Envelope
    cohort: list[CohortEntry] = Field(min_length=1, max_length=MAX_LISTED_PODS)


class ModellerRegistration(WireModel):
    name: str = Field(min_length=1, max_length=200)
    public_key: PublicKeyB64
    enrolment_token: EnrolmentToken | None = None


class ModelPublication(WireModel):
    name: ModelName
    version: ModelVersion
    style: str = Field(max_length=32)
    class_name: str | None = Field(default=None, max_length=200)
    source: str
    sha256: Sha256Hex
    weights_sha256: Sha256Hex | None = None
    # Private by default: only its publisher and the pods its tasks target may read the source.
    public: bool = False


class Refusal(WireModel):
    code: Code


class PodHeartbeat(WireModel):
    type: Literal["heartbeat"] = "heartbeat"


class PodAck(WireModel):
    type: Literal["ack"] = "ack"
    task_id: TaskId


class PodPromote(WireModel):
    """On a standby task socket (opened with ``?standby=1``): from now on this is the pod's socket, push on it."""

    type: Literal["promote"] = "promote"


# What a pod sends on its WebSocket.
PodMessage = Annotated[PodHeartbeat | PodAck | PodPromote, Field(discriminator="type")]


# -- replies (pods and modellers parse) ----------------------------------------------------------


class HubReply(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Ok(HubReply):
    ok: bool = True


class PodRegistered(HubReply):
    pod: PodName
    key_id: KeyId
    new: bool


class ModellerRegistered(HubReply):
    key_id: KeyId


class RegistrationStanding(HubReply):
    """What a hub serving ``--registration approve`` adds to a registration's reply (HTTP 202) while
    the key awaits an admin's ``pod-agent hub approve``; absent (not pending) elsewhere."""

    pending: bool = False
    message: str = Field(default="", max_length=1000)


class ModellerRegisteredStanding(ModellerRegistered, RegistrationStanding):
    """A modeller's registration reply with its standing."""


class PodRegisteredStanding(PodRegistered, RegistrationStanding):
    """A pod's registration reply with its standing."""


class TaskDelivery(HubReply):
    """A task the hub holds for a pod, with the pod's own cohort entry and its inclusion proof; both are
    checked by the pod's verifier against the signed task, not here."""

    type: Literal["task"] = "task"
    task_id: TaskId
    envelope: str = Field(max_length=MAX_REPLY_BYTES)
    proof: CohortProof


class HeartbeatAck(HubReply):
    type: Literal["heartbeat_ack"] = "heartbeat_ack"
    now: int


# What the hub pushes on a pod's WebSocket.
HubPush = Annotated[TaskDelivery | HeartbeatAck, Field(discriminator="type")]


class PendingTasks(HubReply):
    tasks: list[TaskDelivery] = Field(max_length=MAX_TASKS_PER_POLL)


class ModelSource(HubReply):
    name: ModelName
    version: ModelVersion
    style: str = Field(max_length=32)
    class_name: str | None = Field(default=None, max_length=200)
    source: str = Field(max_length=MAX_REPLY_BYTES)
    sha256: Sha256Hex
    weights_sha256: Sha256Hex | None = None


class PodListing(HubReply):
    name: PodName
    key_id: KeyId
    public_key: PublicKeyB64
    schema_: dict[str, Any] = Field(alias="schema")
    schema_hash: Sha256Hex
    row_count: int = Field(ge=0)
    sandbox_level: str = Field(max_length=32)
    last_seen: int
    online: bool
    # Statements the pod's earlier keys signed handing the name on (``protocol.rotation``), oldest first: the
    # hub's relay, checked by the modeller against its own pin.
    rotations: list[Envelope] = Field(default_factory=list, max_length=MAX_LISTED_ROTATIONS)


class PodList(HubReply):
    pods: list[PodListing] = Field(max_length=MAX_LISTED_PODS)


class Stored(HubReply):
    outcome: Literal["stored", "duplicate"]


class TaskSubmitted(Stored):
    task_id: TaskId


class PodDeliveryStatus(HubReply):
    acked: bool
    refusal: Code | None = None
    result: str | None = Field(default=None, max_length=32)
    progress: dict[str, Any] | None = None


class TaskStatusReply(HubReply):
    """A task's per-pod status (``GET /v1/tasks/{id}``, and the long poll ``.../wait``); ``finished``
    counts the pods that answered (a result or a refusal), the ``after`` of the next wait."""

    task_id: TaskId
    created_at: int
    pods: dict[PodName, PodDeliveryStatus]
    finished: int = Field(default=0, ge=0)


class TaskResults(HubReply):
    results: list[Envelope]


class RoundMessages(HubReply):
    """A secure round's stage as the hub holds it: all signed messages (modeller), or, for a pod reading
    ``shares``, the ciphertexts addressed to it by sender."""

    count: int = Field(ge=0)
    messages: list[Envelope] = []
    shares: dict[PodName, str] = {}
