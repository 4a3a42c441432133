"""What the daemon does with one accepted task, behind one call: ``TaskPipeline.run``.

Owns the dispatch by task kind and the shape of its output (metrics, row count,
an optional tensor blob file) that the daemon signs into a ResultPayload.
``schema-stats`` runs here (``stats.py``; aggregate facts only). ``train``,
``evaluate`` and ``predict`` go through the sandbox (pod_agent.sandbox),
training (pod_agent.training) and secure aggregation (pod_agent.secagg); on a
build where those are not wired they fail with the fixed reason
``kind_not_supported``, never a fake result. Failures carry a fixed reason code
that may leave the host; details stay in the local log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pod_agent.config.settings import ModellerPolicy, PodSettings
from pod_agent.data import Datasource, Schema
from pod_agent.errors import PodAgentError
from pod_agent.protocol.messages import BlobRef, ProgressEvent, TaskPayload
from pod_agent.agent.stats import schema_stats

_log = logging.getLogger(__name__)

ProgressSink = Callable[[ProgressEvent], None]


class TaskFailed(PodAgentError):
    """A task could not produce a result; ``reason`` is a fixed code the hub may see."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"task failed ({reason})" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class PipelineOutput:
    """What a finished task hands back: signed into a ResultPayload by the daemon."""

    metrics: dict[str, float]
    n_rows: int
    blob_path: Path | None = None
    blob: BlobRef | None = None
    clipped_values: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class TaskPipeline:
    """Runs accepted tasks; one instance per daemon, safe to call for one task at a time per runner."""

    def __init__(self, *, settings: PodSettings, datasource: Datasource, schema: Schema, work_root: Path) -> None:
        self._settings = settings
        self._datasource = datasource
        self._schema = schema
        self._work_root = work_root

    async def run(self, task: TaskPayload, *, modeller: ModellerPolicy, on_progress: ProgressSink) -> PipelineOutput:
        """Run ``task`` (already verified and authorised); raise TaskFailed or a typed error on failure."""
        on_progress(ProgressEvent(task_id=task.task_id, stage="preparing"))
        if task.kind == "schema-stats":
            return await self._schema_stats(task)
        raise TaskFailed(
            "kind_not_supported",
            f"{task.kind} tasks need the sandbox+training integration, which is not wired on this build",
        )

    async def _schema_stats(self, task: TaskPayload) -> PipelineOutput:
        metrics, rows = await asyncio.to_thread(schema_stats, self._datasource, self._schema)
        if rows < self._settings.privacy.min_rows:
            raise TaskFailed(
                "too_few_rows", f"table has {rows} rows, under privacy.min_rows = {self._settings.privacy.min_rows}"
            )
        return PipelineOutput(metrics=metrics, n_rows=rows)
