"""Secure aggregation: clip, fixed point, pairwise masks, sum.

Pod side: :func:`protect_update` (clip, weight, encode, mask). Aggregator side:
:func:`aggregate_masked` (sum mod M, decode, mean). Torch-free: numpy and cryptography.
"""

from pod_agent.secagg.aggregate import AggregateResult, IncompleteRound, aggregate_masked
from pod_agent.secagg.clip import ClipBound, ClippedUpdate, NormClip, clip_l2, clip_update, floating_tensors
from pod_agent.secagg.fixed_point import Encoding, max_weight, plan_encoding
from pod_agent.secagg.masks import (
    RoundKeyPair,
    add_pairwise_masks,
    dropout_correction,
    participant_from,
    round_key_announcement,
)
from pod_agent.secagg.update import (
    Layout,
    ProtectedUpdate,
    TensorSlot,
    protect_update,
    vector_from_bytes,
    vector_to_bytes,
)

__all__ = [
    "AggregateResult",
    "ClipBound",
    "ClippedUpdate",
    "Encoding",
    "IncompleteRound",
    "Layout",
    "NormClip",
    "ProtectedUpdate",
    "RoundKeyPair",
    "TensorSlot",
    "add_pairwise_masks",
    "aggregate_masked",
    "clip_l2",
    "clip_update",
    "dropout_correction",
    "floating_tensors",
    "max_weight",
    "participant_from",
    "plan_encoding",
    "protect_update",
    "round_key_announcement",
    "vector_from_bytes",
    "vector_to_bytes",
]
