"""The aggregator's side after unmasking: sum vectors mod M, decode, and average.

Owns ``sum_vectors`` (the plain sum mod M of the survivors' masked vectors, which
``plus.unmask_sum`` then unmasks) and ``aggregate_masked`` (sum, when given several
vectors, then decode). Dropouts are handled inside the round by SecAgg+ (``plus.py``);
this module only sees a sum whose masks are gone. Weighted mode divides the decoded sum
by the summed row counts (the sample-weighted mean); otherwise by the number of pods.
Train metrics are always row-weighted means over the pods that had them
(``update.py`` lays them out, ``fixed_point.plan_metrics`` scales them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pod_agent.errors import SecAggError
from pod_agent.protocol import SecAggParams
from pod_agent.secagg.clip import CHUNK_VALUES, ClipBound
from pod_agent.secagg.fixed_point import decode_sum, modulus_dtype, plan_metrics
from pod_agent.secagg.update import Layout


@dataclass(frozen=True)
class AggregateResult:
    mean: dict[str, npt.NDArray[np.floating]]
    total_rows: int
    n_pods: int
    # Row-weighted mean of each train metric over the pods that had it; a metric no pod had is absent.
    metrics: dict[str, float]


def sum_vectors(
    vectors: Sequence[npt.NDArray[np.unsignedinteger]], *, layout: Layout, params: SecAggParams
) -> npt.NDArray[np.unsignedinteger]:
    """The element-wise sum mod M of the vectors, each checked against the layout and modulus."""
    _check_vectors(vectors, layout=layout, params=params)
    return _sum(vectors)


def _sum(vectors: Sequence[npt.NDArray[np.unsignedinteger]]) -> npt.NDArray[np.unsignedinteger]:
    total = vectors[0].copy()
    for vector in vectors[1:]:
        # Unsigned numpy arithmetic wraps, which is exactly addition mod 2**bits.
        np.add(total, vector, out=total)
    return total


def aggregate_masked(
    vectors: Sequence[npt.NDArray[np.unsignedinteger]],
    *,
    layout: Layout,
    params: SecAggParams,
    n_pods: int | None = None,
) -> AggregateResult:
    """Sum the vectors mod M and decode the (weighted) mean per tensor and metric.

    Pass the unmasked sum from ``plus.unmask_sum`` as the one vector with ``n_pods`` the
    number of survivors in it; several vectors (whose masks cancel) default ``n_pods`` to
    their count. Refuses more pods than num_workers (the clip bound then no longer
    keeps the sum from wrapping) and a row-count slot that decodes to fewer rows than pods.
    """
    pods = len(vectors) if n_pods is None else n_pods
    if not 1 <= pods <= params.num_workers:
        raise SecAggError(
            f"the sum holds {pods} pods; param_clipping num_workers = {params.num_workers} bounds it at that "
            "(more could wrap the modulus): raise num_workers in the task"
        )
    _check_vectors(vectors, layout=layout, params=params)
    total = vectors[0] if len(vectors) == 1 else _sum(vectors)
    total_rows = _centered(total, layout.row_slot, params.modulus_bits)
    if total_rows < pods:
        raise SecAggError(
            f"the row-count slot decodes to {total_rows} for {pods} pods: the vectors do not "
            "belong to one round (a masked vector was altered, mixed in from another task, or left masked)"
        )
    divisor = float(params.precision) * (total_rows if params.weighted else pods)
    chunk_values = max(1, min(CHUNK_VALUES, layout.n_values))
    mean: dict[str, npt.NDArray[np.floating]] = {}
    for slot in layout.tensors:
        out = np.empty(slot.size, dtype=np.dtype(slot.dtype))
        # Decode chunk by chunk: no float64 copy of a whole tensor is ever allocated.
        for start in range(0, slot.size, chunk_values):
            stop = min(slot.size, start + chunk_values)
            decode_sum(total[slot.offset + start : slot.offset + stop], divisor=divisor,
                       modulus_bits=params.modulus_bits, out=out[start:stop])
        mean[slot.name] = out.reshape(slot.shape)
    return AggregateResult(mean=mean, total_rows=total_rows, n_pods=pods,
                           metrics=_metric_means(total, layout, params))


def _check_vectors(
    vectors: Sequence[npt.NDArray[np.unsignedinteger]], *, layout: Layout, params: SecAggParams
) -> None:
    if not vectors:
        raise SecAggError("no masked vectors to sum: every pod of the round dropped")
    dtype = modulus_dtype(params.modulus_bits)
    for index, vector in enumerate(vectors):
        if vector.dtype != dtype or vector.shape != (layout.size,):
            raise SecAggError(
                f"masked vector {index} is {vector.dtype} of shape {vector.shape}; the round needs "
                f"{dtype} of shape ({layout.size},): it is from another task or layout"
            )


def _centered(total: npt.NDArray[np.unsignedinteger], index: int, modulus_bits: int) -> int:
    """Centered lift of one element of a sum mod M, as a Python integer."""
    value, modulus = int(total[index]), 1 << modulus_bits
    return value - modulus if value >= modulus // 2 else value


def _metric_means(total: npt.NDArray[np.unsignedinteger], layout: Layout, params: SecAggParams) -> dict[str, float]:
    if not layout.metrics:
        return {}
    scale = plan_metrics(ClipBound.from_params(params), modulus_bits=params.modulus_bits,
                         weighted=params.weighted).scale
    means = {}
    for name in layout.metrics:
        value_slot, rows_slot = layout.metric_slots(name)
        rows = _centered(total, rows_slot, params.modulus_bits)
        if rows > 0:
            means[name] = _centered(total, value_slot, params.modulus_bits) / (scale * rows)
    return means
