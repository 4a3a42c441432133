"""Settings of one pod: the TOML file named by ``--config`` plus ``POD_AGENT_*`` env vars.

Owns the schema of pod.toml (every section and key), its defaults and validation.
Loading and error translation live in ``loader.py``; nothing else reads pod.toml.
Environment variables win over the file; nested keys use ``__``
(``POD_AGENT_HUB__URL``). Unknown keys are an error.
"""

from __future__ import annotations

import codecs
import re
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The TOML file the next PodSettings() reads; set only by loader.load_settings, so that
# env vars (POD_AGENT_*) can be layered over one explicit file and never a guessed one.
TOML_FILE: ContextVar[Path | None] = ContextVar("pod_agent_toml_file", default=None)
# Shared with loader.py, which names the env var that supplied a bad value.
ENV_PREFIX = "POD_AGENT_"
ENV_NESTED_DELIMITER = "__"
# A pod's name as pod.toml gives it; the hub, rosters and secure-round messages name pods the same way.
PodName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
# An enrolment token as `pod-agent hub invite` prints it (the hub's registration takes the same shape).
# Keys that were renamed: the loader refuses the old spelling with a message naming the new one, so an
# operator's old pod.toml fails at start with the fix instead of as an unknown key.
RENAMED_KEYS = {"hub.allow_insecure_http": "hub.unsafe_allow_http"}
ENROLMENT_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{32,128}$"  # noqa: S105 - the token's shape, not a token


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodSection(_Section):
    name: PodName
    state_dir: Path = Path("/var/lib/pod-agent")
    identity_key: Path | None = None  # default: <state_dir>/identity.pem
    identity_key_passphrase_env: str | None = None  # name of an env var holding the passphrase

    @property
    def identity_key_path(self) -> Path:
        return self.identity_key or self.state_dir / "identity.pem"


class HubSection(_Section):
    url: str = "http://127.0.0.1:8700"
    # Other processes of the same hub (one database behind them all): when the current one is unreachable,
    # the pod's next try goes to the next URL in turn (same TLS options for all).
    fallback_urls: list[str] = []
    # With fallback_urls: hold a standby task socket at the next URL, so that when the current process dies the
    # pod's tasks go on at once over a socket already open there (no new signed handshake in the crowd of pods
    # moving at once). Costs the hub one more idle socket per pod.
    standby_socket: bool = True
    ca_bundle: Path | None = None
    pinned_cert_sha256: str | None = None  # hex sha256 of the hub's DER certificate
    unsafe_allow_http: bool = False  # plain http to a non-loopback hub; logged at each start
    heartbeat_s: float = Field(default=15.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    # One-time token from `pod-agent hub invite`, sent with the registration to a hub whose policy is `token`.
    enrolment_token: SecretStr | None = None
    # The largest blob (a task's pinned weights) the pod downloads, whatever size the task signs for.
    max_blob_mb: int = Field(default=1024, ge=1)
    # One blob download must end within this, or it is abandoned: a hub that trickles bytes holds no task forever.
    blob_timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("enrolment_token")
    @classmethod
    def _token_as_invite_prints_it(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here, so that a mistyped token is a config error at start, not a registration refused forever.
        if value is not None and not re.match(ENROLMENT_TOKEN_PATTERN, value.get_secret_value()):
            raise ValueError("is not an enrolment token: paste the 32 or more URL-safe characters "
                             "`pod-agent hub invite` printed")
        return value


class ImagesSection(_Section):
    """``[datasource.images]``: where an image column's relative paths point, and how images are decoded.

    Only regular files under ``dir`` are read (the agent resolves each path and refuses symlinks and
    ``..``); the agent decodes and resizes them into the task's prepared input, so the sandbox reads
    no image file at all.
    """

    dir: Path
    size: tuple[int, int] = (28, 28)  # (height, width) when the task names none
    max_size: tuple[int, int] = (256, 256)  # the largest (height, width) a task may ask for
    mode: Literal["L", "RGB"] = "L"  # grey (1 channel) or RGB (3)
    max_file_mb: int = Field(default=32, ge=1)  # a larger image file fails the task (decompression bombs too)

    @model_validator(mode="after")
    def _sizes_fit(self) -> ImagesSection:
        if min(*self.size, *self.max_size) < 1 or any(s > m for s, m in zip(self.size, self.max_size, strict=True)):
            raise ValueError(f"size {list(self.size)} must be positive and within max_size {list(self.max_size)}")
        return self


class TextSection(_Section):
    """``[datasource.text]``: how a text column becomes token ids (pod_agent.data.text)."""

    max_tokens: int = Field(default=64, ge=1, le=4096)  # tokens per row; a task may ask for fewer


class DatasourceSection(_Section):
    path: Path
    # "image-folders": ``path`` is a directory with one sub-directory of images per class; the table is
    # its files (columns ``image``, a path relative to ``path``, and ``label``, the sub-directory's name).
    format: Literal["csv", "parquet", "auto", "image-folders"] = "auto"
    images: ImagesSection | None = None
    text: TextSection = TextSection()
    table_name: str = "data"
    description: str = ""
    ignore_cols: list[str] = []
    force_stypes: dict[Literal["categorical", "continuous", "text", "image"], list[str]] = {}
    # CSV reading, so raw exports (no header, padded fields, '?' for missing) load by config alone.
    csv_has_header: bool = True
    csv_column_names: list[str] = []
    csv_skip_rows: int = Field(default=0, ge=0)  # lines before the header (or first row)
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)
    csv_encoding: str = "utf-8"
    csv_null_values: list[str] = ["", "NA", "N/A", "null", "NULL", "?"]
    csv_trim_whitespace: bool = True
    categorical_max_unique: int = Field(default=50, ge=1)

    @field_validator("csv_encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown text encoding {value!r}; use a Python codec name such as 'latin-1'") from exc
        return value

    @model_validator(mode="after")
    def _each_column_has_one_fate(self) -> DatasourceSection:
        seen: dict[str, str] = {name: "ignore_cols" for name in self.ignore_cols}
        for stype, names in self.force_stypes.items():
            for name in names:
                if name in seen:
                    raise ValueError(
                        f"column {name!r} is listed in both {seen[name]} and force_stypes.{stype};"
                        " keep it in one place"
                    )
                seen[name] = f"force_stypes.{stype}"
        if len(set(self.csv_column_names)) != len(self.csv_column_names):
            raise ValueError("csv_column_names has duplicates; give every column its own name")
        return self


class PrivacyFloorOverride(_Section):
    """One modeller's own floor: each key set here replaces the ``[privacy]`` default for it."""

    require_secure_aggregation: bool | None = None
    min_pods: int | None = Field(default=None, ge=2)
    min_batch_size: int | None = Field(default=None, ge=1)
    min_rows: int | None = Field(default=None, ge=1)
    max_effective_steps: int | None = Field(default=None, ge=1)
    max_clip_bound: float | None = Field(default=None, gt=0)
    max_clip_norm: float | None = Field(default=None, gt=0)
    metric_digits: int | None = Field(default=None, ge=1, le=7)
    max_metrics: int | None = Field(default=None, ge=0)


class DpBudget(_Section):
    """A differential-privacy budget: the (epsilon, delta) that all releases together may not pass."""

    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)  # also at most 1 / the table's rows, checked when the verifier starts


def _with_offset(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2027-01-31T00:00:00Z, so that it names one instant")
    return value


class ModellerKey(_Section):
    """One more signing key of a modeller (``keys = [{ public_key = ..., not_after = ... }]``)."""

    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    # A task verified after this instant under this key is refused (key_expired); TOML datetimes need an offset.
    not_after: datetime | None = None

    @field_validator("not_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _with_offset(value)


class ModellerPolicy(_Section):
    """What one modeller (identified by its Ed25519 public keys) may do on this pod.

    ``public_key`` (with its optional ``not_after``) is the modeller's current key; ``keys`` lists
    more, each with its own ``not_after``, so a modeller can rotate: add the new key, let the old expire.
    """

    name: str
    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    not_after: datetime | None = None  # as in ModellerKey, for public_key
    keys: list[ModellerKey] = []
    role: Literal["super", "general"]
    kinds: list[Literal["train", "evaluate", "predict"]] = ["train", "evaluate"]
    max_epochs: int = Field(default=20, ge=0)
    max_steps: int = Field(default=10_000, ge=0)
    # FedProx: the largest proximal_mu a task may ask; past it the task is refused (limits_exceeded), not clamped.
    max_proximal_mu: float = Field(default=1.0, ge=0)
    allow_predict: bool = False
    privacy: PrivacyFloorOverride = PrivacyFloorOverride()
    # Differential privacy: the pod clips and noises this modeller's train updates and refuses a task
    # whose releases would pass this budget (policy.budget); None: no noise, no accounting.
    dp: DpBudget | None = None

    @field_validator("not_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _with_offset(value)

    def signing_keys(self) -> list[ModellerKey]:
        """Every key this modeller signs with: ``public_key`` first, then ``keys``."""
        return [ModellerKey(public_key=self.public_key, not_after=self.not_after), *self.keys]


class AllowedModel(_Section):
    """A model a general modeller may run: name plus sha256 of its source."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SecuritySection(_Section):
    sandbox: Literal["strict", "standard", "none"] = "strict"
    sandbox_user: str = "pod-sandbox"  # used when the agent runs as root
    clock_skew_s: int = Field(default=60, ge=0)
    max_task_lifetime_s: int = Field(default=24 * 3600, gt=0)
    max_task_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    modellers: list[ModellerPolicy] = []
    allowed_models: list[AllowedModel] = []
    allow_declarative_models: bool = True
    keep_sandbox_stderr: bool = False
    # Hold every task whose model (name + sha256) the owner has not approved for its modeller as
    # pending_review until `pod-agent review approve|reject` decides (policy.review); pod.toml's
    # allowed_models count as approved for every modeller.
    review: bool = False


class SandboxLimitsSection(_Section):
    wall_timeout_s: float = Field(default=900.0, gt=0)
    cpu_time_s: int = Field(default=1800, gt=0)
    memory_mb: int = Field(default=4096, ge=256)
    max_processes: int = Field(default=64, ge=1)
    max_open_files: int = Field(default=1024, ge=16)
    max_file_mb: int = Field(default=1024, ge=1)
    max_output_mb: int = Field(default=512, ge=1)
    warm_worker: bool = True
    # On: a fork server (sandbox.zygote) forks a fresh child per task where every layer holds for fork
    # children (pod-agent check's forks line); elsewhere warm_pool workers serve. Off: each task starts cold.
    # Workers kept started ahead of tasks (confined, imports done) when there are no forks; a taken one
    # is replaced at once, one start at a time (~3.5 s each on 2 cores). 3 covers a federated loop's
    # train -> evaluate -> train ~0.7 s apart (with 2 the third waited 2-6 s); each holds ~0.5 GB RSS.
    warm_pool: int = Field(default=3, ge=1, le=8)


# Class scores or a regression output fit; a model's whole input row usually does not.
DEFAULT_MAX_PREDICTION_COLUMNS = 16


class PeerPin(_Section):
    """A pod this pod trusts as a secure-aggregation peer: its name and Ed25519 identity key."""

    name: PodName
    public_key: str  # base64 of the raw 32-byte Ed25519 public key, as `pod-agent keys show` prints it


# Kinds that release exact aggregates without noise; a DP-budgeted modeller runs them only when the owner
# lists them in privacy.dp.unsafe_unaccounted_kinds.
UnaccountedKind = Literal["evaluate", "predict", "schema-stats"]


class DpSection(_Section):
    """``[privacy.dp]``: how the pod noises and accounts releases to modellers that have a ``dp`` budget."""

    # Budget of the table itself, binding every modeller together; when set, every modeller needs a dp budget.
    dataset: DpBudget | None = None
    # Least noise standard deviation per unit of L2 sensitivity; a task asking for less gets this.
    min_noise_multiplier: float = Field(default=1.0, gt=0, le=100.0)
    # Cohort members (this pod included) the owner trusts to add their share of the noise under unweighted
    # secure aggregation. Each pod adds 1 / h of the variance, h = t - (n - honest_pods) >= 1 the honest
    # pods any sum it unmasks surely holds (t: the round's share threshold), so the sum holds the full
    # noise as long as that many pods are honest (policy.budget). 1: this pod adds all of it.
    honest_pods: int = Field(default=1, ge=1)
    # Task kinds a DP-budgeted modeller may still run; their releases are exact and not accounted.
    unsafe_unaccounted_kinds: list[UnaccountedKind] = []


class PrivacySection(_Section):
    """The owner's privacy floor (defaults for every modeller) and the peers this pod trusts.

    A task may ask for more protection than the floor, never less; each modeller's
    ``privacy`` table in ``[[security.modellers]]`` overrides these defaults for it.
    """

    share_categories: bool = False
    require_secure_aggregation: bool = True  # train tasks must be securely aggregated
    min_pods: int = Field(default=3, ge=2)  # distinct authenticated peers in a secure cohort
    min_batch_size: int = Field(default=32, ge=1)
    min_rows: int = Field(default=100, ge=1)  # rows of every split a task trains or evaluates on
    max_effective_steps: int = Field(default=5_000, ge=1)  # epochs x ceil(train rows / batch size), or steps
    max_clip_bound: float = Field(default=4.0, gt=0)  # ceiling on the per-value bound B of param_clipping
    max_clip_norm: float | None = Field(default=None, gt=0)  # ceiling on clip_norm; None: no L2 clip required
    metric_digits: int = Field(default=4, ge=1, le=7)  # significant digits of every reported value
    max_metrics: int = Field(default=16, ge=0)  # metrics per result
    max_prediction_columns: int = Field(default=DEFAULT_MAX_PREDICTION_COLUMNS, ge=1)
    # Accept bfloat16/float16 updates when a task's hyperparameters.wire_dtype asks (half the bytes;
    # the agent still checks them and widens them to float32 before clipping and secure aggregation).
    allow_half_precision: bool = False
    peers: list[PeerPin] = []  # [[privacy.peers]]: pinned secure-aggregation peers
    federation_key: str | None = None  # base64 Ed25519 key whose signed roster lists more trusted peers
    federation_roster: Path | None = None  # the signed roster file `pod-agent peers import` wrote
    dp: DpSection = DpSection()

    @model_validator(mode="after")
    def _peer_names_unique(self) -> PrivacySection:
        names = [peer.name for peer in self.peers]
        if len(names) != len(set(names)):
            raise ValueError("privacy.peers: each peer name may appear once")
        return self


class TrainingSection(_Section):
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    # Ranks of a training task (pod.example.toml says what they are; sandbox.limits.granted_ranks).
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    max_concurrent_tasks: int = Field(default=1, ge=1)
    default_batch_size: int = Field(default=64, ge=1)
    seed: int = 42
    shutdown_grace_s: float = Field(default=30.0, ge=0)


class OpsSection(_Section):
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8701, ge=0, le=65535)  # 0 disables the endpoint
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class PodSettings(BaseSettings):
    """Everything pod.toml may say. Built by ``loader.load_settings``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    pod: PodSection
    hub: HubSection = HubSection()
    datasource: DatasourceSection
    security: SecuritySection = SecuritySection()
    sandbox_limits: SandboxLimitsSection = SandboxLimitsSection()
    privacy: PrivacySection = PrivacySection()
    training: TrainingSection = TrainingSection()
    ops: OpsSection = OpsSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = TOML_FILE.get()
        if toml_file is None:
            return (init_settings, env_settings)
        # Order is precedence: explicit arguments, then POD_AGENT_* env, then the file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @model_validator(mode="after")
    def _modeller_names_unique(self) -> PodSettings:
        names = [m.name for m in self.security.modellers]
        if len(names) != len(set(names)):
            raise ValueError("security.modellers: names must be unique")
        return self

    @model_validator(mode="after")
    def _dp_is_enforceable(self) -> PodSettings:
        """A dp budget needs an L2 clip to noise against, and a dataset cap must bind every modeller."""
        for modeller in self.security.modellers:
            if modeller.dp is None:
                if self.privacy.dp.dataset is not None:
                    raise ValueError(
                        f"privacy.dp.dataset binds every modeller: give modeller {modeller.name!r} a "
                        "dp = { epsilon = ..., delta = ... } budget too"
                    )
                continue
            clip = modeller.privacy.max_clip_norm or self.privacy.max_clip_norm
            if clip is None:
                raise ValueError(
                    f"modeller {modeller.name!r} has a dp budget but no max_clip_norm: the noise is scaled to the "
                    "L2 clip, so set privacy.max_clip_norm (or the modeller's own privacy.max_clip_norm)"
                )
        return self
