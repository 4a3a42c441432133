"""Protocol: wire models, canonical JSON, Ed25519 keys, signed envelopes, request auth.

What crosses a process or host boundary is defined here; who may send what is
``pod_agent.policy``'s concern.
"""

from pod_agent.protocol.canonical import (
    MAX_JSON_DEPTH,
    canonical_json,
    model_from_file,
    parse_json,
    sha256_hex,
    source_sha256,
    spec_sha256,
)
from pod_agent.protocol.keys import IdentityKey, PublicKey, key_id_of, passphrase_from_env
from pod_agent.protocol.request_auth import (
    MAX_REQUEST_SKEW_S,
    RequestReplayCache,
    sign_request,
    verify_request,
)
from pod_agent.protocol.roster import FederationRoster, RosterPod
from pod_agent.protocol.signing import (
    envelope_bytes,
    open_envelope,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from pod_agent.protocol.secure_round import (
    MODELLER_SENDER,
    MODELLER_STAGES,
    POD_STAGES,
    STAGE_MODELS,
    STAGES,
    AdvertRoster,
    CommittedList,
    ConsistencySignature,
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    RoundMessage,
    Stage,
    SurvivorList,
    UnmaskShares,
    round_path,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_REQUEST_SKEW_S",
    "MODELLER_SENDER",
    "MODELLER_STAGES",
    "POD_STAGES",
    "STAGES",
    "STAGE_MODELS",
    "AdvertRoster",
    "CommittedList",
    "ConsistencySignature",
    "EncryptedShares",
    "KeyAdvertisement",
    "MaskedInput",
    "RoundMessage",
    "Stage",
    "SurvivorList",
    "UnmaskShares",
    "round_path",
    "FederationRoster",
    "IdentityKey",
    "PublicKey",
    "RequestReplayCache",
    "RosterPod",
    "canonical_json",
    "envelope_bytes",
    "key_id_of",
    "model_from_file",
    "open_envelope",
    "parse_envelope",
    "passphrase_from_env",
    "parse_json",
    "sha256_hex",
    "sign_envelope",
    "sign_request",
    "source_sha256",
    "spec_sha256",
    "verify_envelope",
    "verify_request",
]
