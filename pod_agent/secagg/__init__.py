"""Secure aggregation (SecAgg+): clip, fixed point, neighbour graph, secret shares, masks, sum.

Pod side: :func:`encode_update` (clip, weight, encode, metrics), then :mod:`plus`
(:class:`RoundSecrets`, :func:`encrypt_shares`, :func:`decrypt_shares`,
:func:`mask_input`, :func:`unmask_answer`). Modeller side: :func:`sum_vectors`,
:func:`unmask_sum`, :func:`aggregate_masked` (decode, mean). Graph and threshold:
:func:`cohort_graph` (a round's, over the signed cohort) and :func:`neighbour_graph`.
Torch-free: numpy, cryptography and pycryptodome.
"""

from pod_agent.secagg.aggregate import AggregateResult, aggregate_masked, sum_vectors
from pod_agent.secagg.clip import ClipBound, ClippedUpdate, NormClip, clip_l2, clip_update, floating_tensors
from pod_agent.secagg.fixed_point import (
    METRIC_BOUND,
    Encoding,
    MetricPlan,
    max_weight,
    modulus_dtype,
    plan_encoding,
    plan_metrics,
)
from pod_agent.secagg.graph import NeighbourGraph, RingPlacement, cohort_graph, default_degree, neighbour_graph
from pod_agent.secagg.noise import check_share_range, noise_update
from pod_agent.secagg.plus import (
    HeldShares,
    PeerKeys,
    RoundSecrets,
    SurvivorView,
    UnmaskAnswer,
    UnmaskRequest,
    confirmed_owners,
    decrypt_shares,
    encrypt_shares,
    mask_input,
    unmask_answer,
    unmask_request,
    unmask_sum,
)
from pod_agent.secagg.shamir import Share, combine_shares, split_secret
from pod_agent.secagg.update import (
    EncodedUpdate,
    Layout,
    TensorSlot,
    encode_update,
    vector_from_bytes,
    vector_to_bytes,
)

__all__ = [
    "METRIC_BOUND",
    "AggregateResult",
    "ClipBound",
    "ClippedUpdate",
    "EncodedUpdate",
    "Encoding",
    "HeldShares",
    "Layout",
    "MetricPlan",
    "NeighbourGraph",
    "NormClip",
    "PeerKeys",
    "RingPlacement",
    "RoundSecrets",
    "Share",
    "SurvivorView",
    "TensorSlot",
    "UnmaskAnswer",
    "UnmaskRequest",
    "aggregate_masked",
    "check_share_range",
    "clip_l2",
    "clip_update",
    "cohort_graph",
    "combine_shares",
    "confirmed_owners",
    "decrypt_shares",
    "default_degree",
    "encode_update",
    "encrypt_shares",
    "floating_tensors",
    "mask_input",
    "max_weight",
    "modulus_dtype",
    "neighbour_graph",
    "noise_update",
    "plan_encoding",
    "plan_metrics",
    "split_secret",
    "sum_vectors",
    "unmask_answer",
    "unmask_request",
    "unmask_sum",
    "vector_from_bytes",
    "vector_to_bytes",
]
