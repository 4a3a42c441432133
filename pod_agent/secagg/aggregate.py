"""The aggregator's side: sum masked vectors mod M, decode, and average.

Owns ``aggregate_masked``. The pairwise masks cancel only when every participant's
vector is in the sum; with one missing the sum is noise, so a short list raises
``IncompleteRound`` (the modeller retries the round without the dropped pod, with
fresh round keys). Dropout recovery without a retry plugs in here later: see
``masks.py`` for the correction it will add. Weighted mode divides the decoded sum by
the summed row counts (the sample-weighted mean); otherwise by the number of pods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pod_agent.errors import SecAggError
from pod_agent.protocol.messages import SecAggParams
from pod_agent.secagg.clip import CHUNK_VALUES
from pod_agent.secagg.fixed_point import decode_sum, modulus_dtype
from pod_agent.secagg.update import Layout


class IncompleteRound(SecAggError):
    """Fewer masked vectors than participants: the masks cannot cancel."""

    def __init__(self, *, received: int, participants: int) -> None:
        self.received, self.participants = received, participants
        super().__init__(
            f"secure aggregation got {received} masked vectors for {participants} participants: "
            "the pairwise masks cannot cancel without every participant; retry the round without "
            "the dropped pods, with fresh round keys, if the cohort still meets min_pods"
        )


@dataclass(frozen=True)
class AggregateResult:
    mean: dict[str, npt.NDArray[np.floating]]
    total_rows: int
    n_pods: int


def aggregate_masked(
    vectors: Sequence[npt.NDArray[np.unsignedinteger]], *, layout: Layout, params: SecAggParams
) -> AggregateResult:
    """Sum every participant's masked vector mod M and decode the (weighted) mean per tensor."""
    if len(vectors) != len(params.participants):
        raise IncompleteRound(received=len(vectors), participants=len(params.participants))
    dtype = modulus_dtype(params.modulus_bits)
    for index, vector in enumerate(vectors):
        if vector.dtype != dtype or vector.shape != (layout.size,):
            raise SecAggError(
                f"masked vector {index} is {vector.dtype} of shape {vector.shape}; the round needs "
                f"{dtype} of shape ({layout.size},): it is from another task or layout"
            )
    modulus = 1 << params.modulus_bits
    row_sum = sum(int(vector[layout.row_slot]) for vector in vectors) % modulus
    total_rows = row_sum - modulus if row_sum >= modulus // 2 else row_sum
    if total_rows < len(vectors):
        raise SecAggError(
            f"the row-count slot decodes to {total_rows} for {len(vectors)} pods: the vectors do not "
            "belong to one round (a masked vector was altered or mixed in from another task)"
        )
    divisor = float(params.precision) * (total_rows if params.weighted else len(vectors))
    # Sum and decode chunk by chunk: the running sum stays in cache and no full-size
    # sum array is ever allocated.
    chunk_values = max(1, min(CHUNK_VALUES, layout.n_values))
    running = np.empty(chunk_values, dtype=dtype)
    mean: dict[str, npt.NDArray[np.floating]] = {}
    for slot in layout.tensors:
        out = np.empty(slot.size, dtype=np.dtype(slot.dtype))
        for start in range(0, slot.size, chunk_values):
            first = slot.offset + start
            stop = first + min(chunk_values, slot.size - start)
            segment = running[: stop - first]
            np.copyto(segment, vectors[0][first:stop])
            for vector in vectors[1:]:
                # Unsigned numpy arithmetic wraps, which is exactly addition mod 2**bits.
                np.add(segment, vector[first:stop], out=segment)
            decode_sum(
                segment, divisor=divisor, modulus_bits=params.modulus_bits, out=out[start : start + segment.size]
            )
        mean[slot.name] = out.reshape(slot.shape)
    return AggregateResult(mean=mean, total_rows=total_rows, n_pods=len(vectors))
