"""Exception tree of pod-agent: one root, one branch per concern.

    PodAgentError
    ├── ConfigError            config file or env var invalid (names key and file)
    │   └── HealthPortTaken    (ops.health) the health endpoint's port is held by another socket
    ├── DataError              datasource unreadable, malformed or drifted
    │   └── SchemaDrift        stored schema differs from the data now present
    ├── ProtocolError          a message that cannot be parsed, encoded or verified
    │   ├── KeyFileError       a key file missing, unreadable or too permissive
    │   └── PinOutdated        (protocol.rotation) a pinned key rotated away, its overlap over
    ├── CodedError             an error whose ``code`` (a fixed word) may leave the host
    │   ├── TaskRefused        the pod's policy refuses a task (a RefusalCode)
    │   ├── TaskFailed         an accepted task could not produce a result (a FailureCode)
    │   ├── SandboxError       the confined worker could not run or misbehaved
    │   │   └── SandboxUnavailable the configured level needs a layer this host lacks
    │   ├── TrainingError      the model source or its training failed (no data in text)
    │   └── ContractViolation  what the sandbox returned breaks the task's contract
    ├── StateError             the pod's SQLite state cannot be opened or is inconsistent
    │   ├── AlreadySeen        (state.records) a task id or nonce seen before
    │   ├── AlreadyReleased    (state.records) an update from these weights already left
    │   ├── ReviewNotPending   (state.records) a review decision on a model not waiting
    │   ├── IllegalTransition  (state.records) a task status change its life cycle forbids
    │   └── ExportBroken       (state.audit) an audit export whose chain or signature breaks
    ├── SecAggError            clipping, encoding or masking parameters unusable
    ├── HubError               the hub refused a request or is unreachable
    │   ├── HubUnavailable     unreachable, timed out or 5xx: a later attempt may succeed
    │   │   └── HubMisbehaved  answered with an oversized, malformed or wrongly shaped reply
    │   ├── HubRejected        4xx: this request will not succeed as it is
    │   ├── StorageConflict    (hub.storage) the hub's store refuses a conflicting write
    │   ├── BlobMissing        (hub.storage) a record names a blob the hub holds no record of
    │   ├── RegistrationRefused (hub.admission) the hub's admission policy refuses a key
    │   ├── RateLimited        (hub.limits) a key sends faster than the hub allows
    │   └── TooLarge           (hub.limits) a request or blob over the hub's caps
    ├── ModellerError          the modeller SDK cannot complete a request
    ├── FederationError        (demo.federation) the demo's local federation failed to start
    └── TutorialError          (demo.tutorial) the tutorial's federation file is missing or unreadable

A class named with its module in brackets lives beside the one module that raises
it; ``tests/test_errors_tree.py`` checks that every subclass of PodAgentError in the
package is drawn here under its own base.

Each package raises the branch of its own concern (and its own subclasses);
foreign errors are translated at entry with ``raise ... from exc``. The CLI turns
any PodAgentError into one line and a non-zero exit code.
"""

from __future__ import annotations


class PodAgentError(Exception):
    """Root of every error pod-agent raises on purpose."""

    exit_code: int = 1


class ConfigError(PodAgentError):
    """The configuration is invalid; the message names the key, the file and the fix."""

    exit_code = 2


class DataError(PodAgentError):
    """The datasource cannot be read or does not have the expected shape."""

    exit_code = 3


class SchemaDrift(DataError):
    """The data now present differs from a stored schema."""

    def __init__(self, *, added: list[str], dropped: list[str], changed: list[str]) -> None:
        self.added, self.dropped, self.changed = added, dropped, changed
        parts = []
        if added:
            parts.append(f"added {added}")
        if dropped:
            parts.append(f"dropped {dropped}")
        if changed:
            parts.append(f"changed type {changed}")
        super().__init__(
            "datasource schema drifted: " + "; ".join(parts)
            + " - re-register the pod (pod-agent run does so) or restore the data"
        )


class ProtocolError(PodAgentError):
    """A message cannot be parsed, canonically encoded or verified."""


class KeyFileError(ProtocolError):
    """A key file is missing, unreadable, malformed or readable by others."""


class CodedError(PodAgentError):
    """An error whose ``code`` may leave the host; ``detail`` stays in the local log.

    ``code`` is a fixed word chosen by the agent (``policy.codes`` holds the vocabularies);
    the daemon maps every code it did not choose itself to ``model_error`` before it is sent.
    """

    def __init__(self, code: str, detail: str = "", *, label: str = "failed") -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{label} ({code})" + (f": {detail}" if detail else ""))


class TaskRefused(CodedError):
    """The pod refuses a task; ``code`` is the reason sent to the hub, ``detail`` stays local.

    ``task_id`` is the task's id once its signature verified and it parsed; None before that.
    """

    def __init__(self, code: str, detail: str, *, task_id: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(code, detail, label="task refused")


class TaskFailed(CodedError):
    """An accepted task could not produce a result; ``code`` is a fixed word the hub may see."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail, label="task failed")


class StateError(PodAgentError):
    """The pod's durable state cannot be opened or is inconsistent."""


class SandboxError(CodedError):
    """The confined worker could not be started, was killed, or broke the frame protocol."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail, label="sandbox")


class SandboxUnavailable(SandboxError):
    """The configured sandbox level needs a layer this host lacks."""

    def __init__(self, level: str, layer: str, remedy: str) -> None:
        self.level, self.layer, self.remedy = level, layer, remedy
        super().__init__("unavailable", f"level {level!r} needs {layer}: {remedy}")


class TrainingError(CodedError):
    """The model could not be built or trained; ``code`` is a fixed word the worker reports."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail, label="training failed")


class ContractViolation(CodedError):
    """What the sandbox handed back is not what the task's contract allows."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail, label="sandbox output rejected")


class SecAggError(PodAgentError):
    """Secure-aggregation parameters or inputs are unusable."""


class HubError(PodAgentError):
    """The hub refused a request, answered nonsense, or cannot be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class HubUnavailable(HubError):
    """The hub could not be reached or failed (5xx); a later attempt may succeed."""


class HubMisbehaved(HubUnavailable):
    """The hub answered, but with a reply over its size cap, not UTF-8 JSON, or not of the route's model.

    An outage to the daemon's loops (retried after backoff); a caller that must not keep asking the
    same hub the same question (a secure round's poll) can tell it apart from a hub that is down.
    """


class HubRejected(HubError):
    """The hub refused this request (4xx); ``status`` says why (401 unknown key, 409 conflict ...)."""


class ModellerError(PodAgentError):
    """The modeller SDK cannot complete a request."""
