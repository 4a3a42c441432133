"""Plain-Python helpers for notebooks and scripts on top of the async ``ModellerClient``.

Owns ``run_sync`` (run a coroutine where no event loop is running) and
``schema_stats`` (one call: submit a schema-stats task to pods and return their
verified statistics). Everything else is the client's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from pod_agent.errors import ModellerError
from pod_agent.modeller.client import ModellerClient, VerifiedResult
from pod_agent.modeller.tasks import build_task

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion; inside a running loop (Jupyter) it runs on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def schema_stats(client: ModellerClient, pods: list[str], *, timeout_s: float = 120.0) -> dict[str, dict[str, float]]:
    """Aggregate statistics (row count, nulls, mean/std) from each pod, signatures verified."""
    listed = {p.name: p for p in await client.pods()}
    missing = [p for p in pods if p not in listed]
    if missing:
        raise ModellerError(f"pods {missing} are not registered with the hub")
    task = build_task(
        modeller_id=client.key.key_id, pods=pods, kind="schema-stats", schema_hash=listed[pods[0]].schema_hash,
        pod_schema_hashes={p: listed[p].schema_hash for p in pods},
    )
    await client.submit_task(task)
    answers = await client.wait_results(task.task_id, pods, timeout_s=timeout_s)
    out: dict[str, dict[str, float]] = {}
    for pod, answer in answers.items():
        if not isinstance(answer, VerifiedResult):
            raise ModellerError(f"pod {pod!r} refused the schema-stats task ({answer})")
        if answer.payload.status != "done":
            raise ModellerError(f"pod {pod!r} failed the schema-stats task ({answer.payload.reason})")
        out[pod] = dict(answer.payload.metrics)
    return out
