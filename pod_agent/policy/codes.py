"""The fixed words a pod may send about a task: refusal codes and failure codes.

A code is what goes back to the hub and into metrics; the detail text of a
``CodedError`` stays in the local log. ``RefusalCode`` is listed in the order of the
verifier's table (``verifier.py``'s docstring), each code where it is first raised;
three are raised again by a later check: ``malformed`` (a signed payload that is not a
valid task, or expires before it is issued), ``not_targeted`` (the secagg cohort, after
the limits) and ``clip_too_loose`` (more participants than num_workers, after the peer
count). ``FailureCode`` is the whole vocabulary of a failed task: the
daemon sends a code only through :func:`failure_code_for`, which turns anything
else (a word the sandbox made up, a code of an internal branch) into a code of
this enum, so that nothing chosen inside the sandbox reaches the hub.
"""

from __future__ import annotations

import enum

from pod_agent.errors import CodedError, ContractViolation, SandboxError, TaskRefused


class RefusalCode(str, enum.Enum):
    PAYLOAD_TOO_LARGE = "payload_too_large"  # raw message over security.max_task_bytes
    MALFORMED = "malformed"  # not JSON, not an envelope, or a signed payload that is not a valid task
    UNKNOWN_SIGNER = "unknown_signer"  # signer key id not among security.modellers
    BAD_SIGNATURE = "bad_signature"  # signature does not verify over the canonical payload
    KEY_EXPIRED = "key_expired"  # signed by a modeller key past its not_after
    LIFETIME_EXCEEDED = "lifetime_exceeded"  # expires_at - issued_at over max_task_lifetime_s
    NOT_YET_VALID = "not_yet_valid"  # issued_at > now + clock skew
    EXPIRED = "expired"  # now > expires_at + clock skew
    REPLAY = "replay"  # task_id or nonce seen before
    NOT_TARGETED = "not_targeted"  # the delivery's cohort entry is another pod's
    BAD_COHORT_PROOF = "bad_cohort_proof"  # the entry's inclusion proof does not lead to the signed cohort root
    PREDICT_NOT_PERMITTED = "predict_not_permitted"  # predict without allow_predict
    KIND_NOT_PERMITTED = "kind_not_permitted"  # kind not in the modeller's kinds
    ROLE_NOT_PERMITTED = "role_not_permitted"  # general modeller, model not allow-listed
    LIMITS_EXCEEDED = "limits_exceeded"  # epochs/steps over the modeller's maximum
    # The owner's privacy floor (config: [privacy], per modeller [security.modellers.privacy]).
    SECURE_AGGREGATION_REQUIRED = "secure_aggregation_required"  # train without secagg
    WEIGHTS_NOT_PINNED = "weights_not_pinned"  # train without the starting weights pinned by sha256
    BATCH_TOO_SMALL = "batch_too_small"  # batch_size under min_batch_size
    SPLIT_TOO_SMALL = "split_too_small"  # a split the task uses holds fewer than min_rows rows
    TOO_MANY_STEPS = "too_many_steps"  # epochs x ceil(train rows / batch) (or steps) over max_effective_steps
    CLIP_TOO_LOOSE = "clip_too_loose"  # per-value bound or clip_norm above the owner's ceiling
    TOO_FEW_PODS = "too_few_pods"  # a signed cohort size under min_pods
    SOURCE_HASH_MISMATCH = "source_hash_mismatch"  # model source/spec does not hash to model.sha256
    SCHEMA_MISMATCH = "schema_mismatch"  # schema_hash differs from this pod's datasource
    # Differential privacy (config: a modeller's dp budget, [privacy.dp]; policy.budget).
    UNACCOUNTED_RELEASE = "unaccounted_release"  # evaluate/predict/schema-stats for a DP-budgeted modeller
    PRIVACY_BUDGET_EXHAUSTED = "privacy_budget_exhausted"  # the task's releases would pass a dp budget
    # The owner's review of the model (security.review; policy.review): held as pending_review, then this,
    # or EXPIRED when the task's expiry passes while it waits.
    REVIEW_REJECTED = "review_rejected"


class FailureCode(str, enum.Enum):
    # Decided by the agent from what it saw happen.
    MEMORY_EXCEEDED = "memory_exceeded"  # the memory cap fired (cgroup OOM, RLIMIT_DATA, MemoryError)
    TIME_EXCEEDED = "time_exceeded"  # wall or CPU time cap
    OUTPUT_TOO_LARGE = "output_too_large"  # result, frames, files or stderr over their caps
    RESULT_REJECTED = "result_rejected"  # the result broke the update contract (detail in the local log)
    TOO_FEW_ROWS = "too_few_rows"  # a split under privacy.min_rows once prepared
    TOO_MANY_STEPS = "too_many_steps"  # the prepared split needs more steps than max_effective_steps
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"  # the configured level cannot be had on this host
    SANDBOX_ERROR = "sandbox_error"  # the confined worker could not be run (launch, frames, cgroup)
    DATA_ERROR = "data_error"  # the datasource cannot be read or encoded for this selection
    SECAGG_ERROR = "secagg_error"  # the update cannot be encoded or masked for this round
    WEIGHTS_UNAVAILABLE = "weights_unavailable"  # the pinned weights could not be fetched or checked
    SOURCE_MISSING = "source_missing"  # the model reference could not be fetched
    UNKNOWN_SIGNER = "unknown_signer"  # the signer left security.modellers while the task waited
    INTERNAL_ERROR = "internal_error"  # a pod-agent bug
    # A secure round (agent.secure_round): decided by the pod from what the modeller and hub sent.
    ALREADY_RELEASED = "already_released"  # an update from these starting weights was already released
    ROUND_INTERRUPTED = "round_interrupted"  # the pod restarted mid-round: its secrets are gone, it dropped out
    ROUND_TIMEOUT = "round_timeout"  # a stage's message did not come within the task's stage deadline
    BAD_ADVERTISEMENT = "bad_advertisement"  # a forwarded key advert fails the pinned key, task or round
    ROSTER_OUTSIDE_COHORT = "roster_outside_cohort"  # the roster names a pod outside the signed cohort
    ROSTER_NOT_NEIGHBOUR = "roster_not_neighbour"  # the roster shows an entry the ring does not place near this pod
    ROSTER_INCOMPLETE = "roster_incomplete"  # the roster leaves out a neighbour's cohort entry
    MISADDRESSED = "misaddressed"  # a modeller's round message addressed to another pod
    UNKNOWN_PEER = "unknown_peer"  # a roster member is not a peer the owner trusts under its key (privacy.peers)
    NOT_IN_ROUND = "not_in_round"  # the modeller left this pod out of the roster, committed or survivors
    TOO_FEW_NEIGHBOURS = "too_few_neighbours"  # fewer neighbours than the round's threshold
    BAD_ROUND_MESSAGE = "bad_round_message"  # a round message badly signed, malformed or refused by the hub
    INCONSISTENT_SURVIVORS = "inconsistent_survivors"  # neighbours were shown another survivor list
    UNMASK_REFUSED = "unmask_refused"  # survivors and dropped overlap, stray outside the round, or too few
    # Reported by the worker inside the sandbox: a hostile model may pick any of these,
    # so each is at most log2(len(FailureCode)) bits per task, like any failure at all.
    MODEL_ERROR = "model_error"  # the model failed; also every word outside this enum
    SYNTAX_ERROR = "syntax_error"
    IMPORT_ERROR = "import_error"
    MODEL_CLASS_NOT_FOUND = "model_class_not_found"
    WRONG_BASE_CLASS = "wrong_base_class"
    BAD_SPEC = "bad_spec"
    WEIGHTS_MISMATCH = "weights_mismatch"
    NON_FINITE_LOSS = "non_finite_loss"
    FORWARD_SHAPE_MISMATCH = "forward_shape_mismatch"


# Sandbox-side codes the agent itself raises (runner, frames, cgroup) and what they mean for the task.
_SANDBOX_CODES: dict[str, FailureCode] = {
    "memory_exceeded": FailureCode.MEMORY_EXCEEDED,
    "wall_timeout": FailureCode.TIME_EXCEEDED,
    "cpu_time_exceeded": FailureCode.TIME_EXCEEDED,
    "output_exceeded": FailureCode.OUTPUT_TOO_LARGE,
    "frame_too_large": FailureCode.OUTPUT_TOO_LARGE,
    "file_size_exceeded": FailureCode.OUTPUT_TOO_LARGE,
    "unavailable": FailureCode.SANDBOX_UNAVAILABLE,
}
# Worker words that carry the same meaning under another name.
_WORKER_ALIASES: dict[str, FailureCode] = {
    "model_import_error": FailureCode.IMPORT_ERROR,
    "multiple_model_classes": FailureCode.MODEL_CLASS_NOT_FOUND,
    "weights_invalid": FailureCode.WEIGHTS_MISMATCH,
    "memory_exceeded": FailureCode.MEMORY_EXCEEDED,
    "file_size_exceeded": FailureCode.OUTPUT_TOO_LARGE,
}
_WORKER_CODES = frozenset(
    {
        FailureCode.MODEL_ERROR, FailureCode.SYNTAX_ERROR, FailureCode.IMPORT_ERROR, FailureCode.MODEL_CLASS_NOT_FOUND,
        FailureCode.WRONG_BASE_CLASS, FailureCode.BAD_SPEC, FailureCode.WEIGHTS_MISMATCH, FailureCode.NON_FINITE_LOSS,
        FailureCode.FORWARD_SHAPE_MISMATCH,
    }
)
_REFUSAL_WORDS = frozenset(code.value for code in RefusalCode)
_FAILURE_WORDS = frozenset(code.value for code in FailureCode)
# The runner's code for "the worker reported a failure"; its detail is the worker's own word.
WORKER_FAILED = "task_failed"


def worker_code(word: str) -> FailureCode:
    """The code for a word the worker reported: its own if it is a worker code, else model_error."""
    if word in _WORKER_ALIASES:
        return _WORKER_ALIASES[word]
    try:
        code = FailureCode(word)
    except ValueError:
        return FailureCode.MODEL_ERROR
    # A worker may not claim an agent-decided code (say sandbox_unavailable) to mislead the modeller.
    return code if code in _WORKER_CODES else FailureCode.MODEL_ERROR


def failure_code_for(exc: CodedError) -> str:
    """The one word the hub may see for ``exc``: a RefusalCode value or a FailureCode value."""
    if isinstance(exc, TaskRefused):
        return exc.code if exc.code in _REFUSAL_WORDS else FailureCode.INTERNAL_ERROR.value
    if isinstance(exc, ContractViolation):
        rejected: FailureCode = FailureCode.OUTPUT_TOO_LARGE if exc.code == "too_large" else FailureCode.RESULT_REJECTED
        return rejected.value
    if isinstance(exc, SandboxError):
        if exc.code == WORKER_FAILED:
            return worker_code(exc.detail).value
        return _SANDBOX_CODES.get(exc.code, FailureCode.SANDBOX_ERROR).value
    if exc.code in _FAILURE_WORDS:
        return exc.code
    # A TrainingError raised in this process (the local fit) or an unlisted TaskFailed word.
    return worker_code(exc.code).value
