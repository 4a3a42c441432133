"""Wire models (``"v": 1``) exchanged between modeller, hub and pod.

Owns the shape of a task, a result and a progress event; the messages of a secure
round are ``secure_round.py``'s. Signing and canonical encoding are in ``canonical.py`` and
``signing.py``; what a pod accepts is decided by ``pod_agent.policy``.
Times are integer Unix seconds; hashes are lowercase hex sha256.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
KeyId = Sha256Hex
TaskKind = Literal["train", "evaluate", "predict", "schema-stats"]
ModelStyle = Literal["lightning", "module", "declarative"]
HyperValue = int | float | str | bool
# A refusal or failure code as it crosses the wire: one lowercase word (policy.codes holds the vocabularies).
Code = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(WireModel):
    """Which model to run: inline source, a declarative spec, or a hub reference, pinned by sha256.

    ``sha256`` is over the NFC-normalised UTF-8 source text (``canonical.source_sha256``), or over
    the canonical JSON of ``spec`` (``canonical.spec_sha256``); ``canonical.model_from_file`` builds one.
    """

    style: ModelStyle
    name: str = Field(min_length=1, max_length=200)
    class_name: str | None = None
    source: str | None = None
    spec: dict[str, object] | None = None
    hub_ref: str | None = None  # "name@version" fetched from the hub; sha256 still binds it
    sha256: Sha256Hex

    @model_validator(mode="after")
    def _one_body(self) -> ModelRef:
        bodies = [b is not None for b in (self.source, self.spec, self.hub_ref)]
        if sum(bodies) != 1:
            raise ValueError("model needs exactly one of source, spec, hub_ref")
        if self.style == "declarative" and self.source is not None:
            raise ValueError("a declarative model carries a spec, not source")
        if self.style != "declarative" and self.spec is not None:
            raise ValueError(f"style {self.style!r} carries source, not a spec")
        if self.style != "declarative" and not self.class_name:
            raise ValueError(f"style {self.style!r} needs class_name")
        return self


class Hyperparameters(WireModel):
    epochs: int | None = Field(default=None, ge=1)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=64, ge=1, le=1_000_000)
    learning_rate: float = Field(default=1e-3, gt=0)
    seed: int = 42
    extra: dict[str, HyperValue] = {}
    # Which of the model's floating tensors travel (pinned weights, update, masked vector): "all", or
    # "trainable": only parameters with requires_grad (LoRA adapters over a frozen base built from the seed).
    exchange: Literal["all", "trainable"] = "all"
    # The dtype of the returned tensors; a half dtype is accepted only where the pod owner allows it
    # (``privacy.allow_half_precision``) and is widened to float32 before secure aggregation.
    wire_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> Hyperparameters:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        return self


class Split(WireModel):
    """Percentages of rows for train/validation/test; they sum to 100."""

    train: int = Field(default=80, ge=0, le=100)
    validation: int = Field(default=10, ge=0, le=100)
    test: int = Field(default=10, ge=0, le=100)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_100(self) -> Split:
        if self.train + self.validation + self.test != 100:
            raise ValueError("split percentages must sum to 100")
        return self


class DataSelection(WireModel):
    target: str
    columns: list[str] | None = None  # None: every column but target and ignore
    ignore: list[str] = []
    split: Split = Split()
    # How categorical columns become features (pod_agent.data.task_input): "hashed" keeps the
    # width and meaning of every feature equal across pods whose category sets differ.
    categorical_encoding: Literal["one-hot", "hashed"] = "one-hot"
    # (mean, std) per continuous column, agreed for the whole cohort (e.g. pooled from
    # schema-stats results). A pod standardises these columns with them instead of its own
    # training rows' moments, so that a feature value means the same on every pod.
    scaling: dict[str, tuple[float, float]] = {}
    # Image columns: (height, width) every image is resized to, within the pod owner's
    # ``datasource.images.max_size``; None: the owner's ``datasource.images.size``.
    image_size: tuple[int, int] | None = None
    image_mode: Literal["L", "RGB"] | None = None  # grey or RGB; None: the owner's datasource.images.mode
    # Text columns: tokens per row (None: the owner's ``datasource.text.max_tokens``, a task may ask
    # for fewer, never more) and a fixed word vocabulary; None: UTF-8 byte tokens (pod_agent.data.text).
    max_tokens: int | None = Field(default=None, ge=1)
    vocabulary: list[str] | None = Field(default=None, max_length=100_000)

    @model_validator(mode="after")
    def _positive_scales(self) -> DataSelection:
        bad = sorted(name for name, (_, std) in self.scaling.items() if not std > 0)
        if bad:
            raise ValueError(f"scaling: std must be > 0 for {bad}")
        return self


class WeightsRef(WireModel):
    """Pretrained or global weights (safetensors) fetched from the hub, pinned by sha256."""

    blob_id: str
    sha256: Sha256Hex
    size_bytes: int = Field(ge=0)


# Far above any path a real tree gives (a tree of 2**40 pods has paths of 40), so a hostile proof stays small.
MAX_PROOF_HASHES = 64


class CohortEntry(WireModel):
    """One pod of a task's cohort: the schema hash the task pins for it and its identity key id."""

    pod: str = Field(min_length=1, max_length=200)
    schema_hash: Sha256Hex
    key_id: KeyId


class Cohort(WireModel):
    """The signed commitment to a task's cohort: the Merkle root of its entries and how many there are."""

    root: Sha256Hex
    size: int = Field(ge=1, le=10_000_000)


class CohortProof(WireModel):
    """One pod's entry and the sibling hashes from its leaf to the root (leaf side first)."""

    entry: CohortEntry
    index: int = Field(ge=0)
    path: list[Sha256Hex] = Field(max_length=MAX_PROOF_HASHES)


class SecAggParams(WireModel):
    """Parameter clipping in the seeds' form; the round's cohort is the task's (``TaskPayload.cohort``).

    Round keys are not here: they are fresh per task and round, in signed advertisements
    (``secure_round.py``), each shown with its pod's cohort entry and inclusion proof.
    """

    prime_q: int = Field(gt=0)
    precision: int = Field(gt=0)
    num_workers: int = Field(ge=1)
    modulus_bits: Literal[32, 64] = 64
    round: int = Field(default=0, ge=0)
    clip_norm: float | None = Field(default=None, gt=0)
    weighted: bool = True  # scale by training rows and send the row count in the masked vector
    # Train metrics summed inside the masked vector (cohort means only); nothing travels in clear.
    metrics: list[str] = Field(default=[], max_length=16)
    # SecAgg+ stage deadlines: the modeller collects adverts for advert_timeout_s after sending the
    # task (the cohort trains meanwhile), then each later stage for stage_timeout_s; a pod waits
    # for each of the modeller's messages a little longer than the modeller collects.
    advert_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    stage_timeout_s: float = Field(default=60.0, gt=0, le=3600)


class DpParams(WireModel):
    """What the modeller asks of a pod's differential privacy: the noise multiplier and L2 clip of each
    release, and the rounds it planned. A request only: the pod applies at least its own
    ``[privacy.dp]`` noise and at most its own clip (``pod_agent.policy.budget``)."""

    noise_multiplier: float = Field(gt=0, le=100)
    clip_norm: float = Field(gt=0)
    rounds: int = Field(default=1, ge=1, le=100_000)


class ScaffoldParams(WireModel):
    """SCAFFOLD (Karimireddy et al. 2020): the server's control variate ``c`` (safetensors, one float32 tensor per
    name of the global weights, pinned by sha256 and fetched like them), and the run a pod keys its own control
    variate ``c_i`` by. ``c_i`` stays in the pod's state; only its change travels, inside the update vector."""

    run_id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    control: WeightsRef


class TaskLimits(WireModel):
    """A task may ask for less than the pod's limits, never more."""

    wall_timeout_s: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)


class TaskPayload(WireModel):
    v: Literal[1] = 1
    task_id: str = Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    modeller_id: KeyId
    # The pods the task is for, committed by a Merkle root (``cohort.py``): each pod is shown its own entry
    # (name, schema hash, identity key id) with an inclusion proof, never the whole list.
    cohort: Cohort
    issued_at: int
    expires_at: int
    nonce: str = Field(pattern=r"^[0-9a-f]{32,128}$")
    kind: TaskKind
    model: ModelRef | None = None  # None only for schema-stats
    hyperparameters: Hyperparameters = Hyperparameters()
    weights: WeightsRef | None = None
    data: DataSelection | None = None
    returns: Literal["update", "weights"] = "update"
    # A train task that first evaluates the weights it starts from on the test split and returns those
    # test_* metrics with its update: federated evaluation of the incoming global model with no task of its own.
    evaluate_first: bool = False
    secagg: SecAggParams | None = None
    dp: DpParams | None = None
    limits: TaskLimits = TaskLimits()
    # FedProx: the pod's engine adds proximal_mu / 2 * ||w - w_start||^2 to the model's loss (each pod bounds mu).
    proximal_mu: float | None = Field(default=None, gt=0, le=1000)
    scaffold: ScaffoldParams | None = None

    @model_validator(mode="after")
    def _local_correction_in_train_tasks(self) -> TaskPayload:
        if (self.proximal_mu is not None or self.scaffold is not None) and self.kind != "train":
            raise ValueError("proximal_mu and scaffold apply to train tasks only")
        if self.scaffold is not None and (self.returns != "update" or self.weights is None):
            raise ValueError("a scaffold task returns an update from pinned weights (returns='update', weights set)")
        return self


class Envelope(WireModel):
    """A signed payload: ``signature`` is Ed25519 over ``canonical_json(payload)``."""

    v: Literal[1] = 1
    payload: dict[str, object]
    signer: KeyId
    signature: str  # base64


class BlobRef(WireModel):
    """A tensor blob (safetensors bytes) that travels beside a signed message."""

    sha256: Sha256Hex
    size_bytes: int = Field(ge=0)
    encoding: Literal["safetensors", "secagg-u32", "secagg-u64"]


class ResultPayload(WireModel):
    v: Literal[1] = 1
    task_id: str
    pod: str
    kind: TaskKind
    status: Literal["done", "failed", "refused"]
    reason: Code | None = None  # a fixed refusal/failure code; never sandbox text
    metrics: dict[str, float] = {}
    n_rows: int = Field(default=0, ge=0)
    blob: BlobRef | None = None
    produced_at: int


class ProgressEvent(WireModel):
    v: Literal[1] = 1
    task_id: str
    stage: Literal["pending_review", "queued", "preparing", "training", "validating", "uploading", "done", "failed"]
    epoch: int | None = Field(default=None, ge=0)
    step: int | None = Field(default=None, ge=0)
    fraction: float | None = Field(default=None, ge=0, le=1)  # of the task's steps, computed by the pod
