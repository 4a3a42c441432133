"""A task's verified results written out: files named for what they hold, and the table ``results`` prints.

Owns ``save_results`` (each pod's signed result as ``<pod>.json`` and its blob under a name that says
what the tensors are: ``update`` (new minus old weights: add it to the starting weights before using
it), ``weights``, ``predictions`` or a secure round's ``masked-update``) and ``results_table`` (status,
refusal or failure code, whose key verified the signature, and every metric). Fetching and verifying
are ``client.ModellerClient``'s; whether a train task asked for an update or weights comes from the
modeller's own record of the task (``tasks.load_task_record``), since the result does not say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pod_agent.modeller.client import ModellerClient, VerifiedResult
from pod_agent.protocol import ResultPayload, TaskPayload

# The name a train result's tensors get when this modeller has no record of the task (sent from elsewhere).
UNKNOWN_TRAIN_BLOB = "update-or-weights"
# More metrics than this would not fit a terminal's width as columns (a schema-stats result has three per column).
MAX_METRIC_COLUMNS = 6


@dataclass(frozen=True)
class PodAnswer:
    """One pod's answer to a task as ``results`` reports it."""

    pod: str
    status: str
    reason: str | None
    metrics: dict[str, float]
    # pinned: verified against the modeller's pod keys file; unpinned: against the key the hub lists;
    # unsigned: a refusal code the hub relays for a pod that could not verify the task.
    key: str
    blob: Path | None


def blob_label(result: ResultPayload, task: TaskPayload | None) -> str:
    """What a result's blob holds, as its file name says it."""
    if result.blob is not None and result.blob.encoding != "safetensors":
        return "masked-update"  # one pod's masked vector: only the round's sum, unmasked, means anything
    if result.kind == "train":
        return UNKNOWN_TRAIN_BLOB if task is None else task.returns
    if result.kind == "predict":
        return "predictions"
    return result.kind


async def save_results(
    client: ModellerClient,
    *,
    verified: list[VerifiedResult],
    refused: dict[str, str],
    out: Path,
    task: TaskPayload | None,
) -> list[PodAnswer]:
    """Write each verified result (and download its blob) under ``out``; refusal codes without a
    signature are reported, not written. Sorted by pod."""
    out.mkdir(parents=True, exist_ok=True)
    answers = []
    for result in verified:
        payload = result.payload
        record = {"payload": payload.model_dump(mode="json"), "envelope": result.envelope.model_dump(mode="json")}
        (out / f"{result.pod}.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        blob = None
        if payload.blob is not None:
            suffix = "safetensors" if payload.blob.encoding == "safetensors" else "bin"
            blob = await client.download_blob(
                payload.blob.sha256, out / f"{result.pod}.{blob_label(payload, task)}.{suffix}"
            )
        answers.append(PodAnswer(
            pod=result.pod, status=payload.status, reason=payload.reason, metrics=dict(payload.metrics),
            key="pinned" if result.pinned else "unpinned", blob=blob,
        ))
    answers.extend(
        PodAnswer(pod=pod, status="refused", reason=code, metrics={}, key="unsigned", blob=None)
        for pod, code in refused.items()
    )
    return sorted(answers, key=lambda a: a.pod)


def results_table(answers: list[PodAnswer]) -> str:
    """Fixed-width: pod, status, code, key, each metric (blank where a pod has none), file. Past
    ``MAX_METRIC_COLUMNS`` metrics (schema-stats reports several per column) they follow the table
    as one ``pod metric value`` line each, so the table stays readable."""
    metrics = sorted({name for a in answers for name in a.metrics})
    wide = len(metrics) <= MAX_METRIC_COLUMNS
    columns = metrics if wide else []
    rows = [
        [
            a.pod, a.status, a.reason or "-", a.key,
            *(_value(a, m) for m in columns),
            a.blob.name if a.blob is not None else "-",
        ]
        for a in answers
    ]
    lines = _aligned([["pod", "status", "code", "key", *columns, "file"], *rows])
    if not wide:
        lines += _aligned([[a.pod, m, _value(a, m)] for a in answers for m in metrics if m in a.metrics])
    return "\n".join(lines)


def _value(answer: PodAnswer, metric: str) -> str:
    return f"{answer.metrics[metric]:.4g}" if metric in answer.metrics else "-"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in rows]
