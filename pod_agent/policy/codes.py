"""Refusal codes: the one fixed word per reason a pod refuses a task.

The code is what goes back to the hub and into metrics; the detail text of a
``TaskRefused`` stays in the local log. Listed in the order the verifier checks.
"""

from __future__ import annotations

import enum


class RefusalCode(str, enum.Enum):
    PAYLOAD_TOO_LARGE = "payload_too_large"  # raw message over security.max_task_bytes
    MALFORMED = "malformed"  # not JSON, not an envelope, or a signed payload that is not a valid task
    UNKNOWN_SIGNER = "unknown_signer"  # signer key id not among security.modellers
    BAD_SIGNATURE = "bad_signature"  # signature does not verify over the canonical payload
    EXPIRED = "expired"  # now > expires_at + clock skew
    NOT_YET_VALID = "not_yet_valid"  # issued_at > now + clock skew
    LIFETIME_EXCEEDED = "lifetime_exceeded"  # expires_at - issued_at, or the task's age, over max_task_lifetime_s
    REPLAY = "replay"  # task_id or nonce seen before
    NOT_TARGETED = "not_targeted"  # this pod is not among payload.pods
    PREDICT_NOT_PERMITTED = "predict_not_permitted"  # predict without allow_predict
    KIND_NOT_PERMITTED = "kind_not_permitted"  # kind not in the modeller's kinds
    ROLE_NOT_PERMITTED = "role_not_permitted"  # general modeller, model not allow-listed
    LIMITS_EXCEEDED = "limits_exceeded"  # epochs/steps over the modeller's maximum
    TOO_FEW_PODS = "too_few_pods"  # secure aggregation with fewer than privacy.min_pods participants
    SOURCE_HASH_MISMATCH = "source_hash_mismatch"  # model source/spec does not hash to model.sha256
    SCHEMA_MISMATCH = "schema_mismatch"  # schema_hash differs from this pod's datasource
