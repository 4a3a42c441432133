"""Plain-Python helpers for notebooks and scripts on top of the async ``ModellerClient``.

Owns ``run_sync`` (run a coroutine where no event loop is running) and
``schema_stats`` (one call: submit a schema-stats task to pods and return their
verified statistics). Everything else is the client's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Mapping
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


async def schema_stats(
    client: ModellerClient, pods: list[str], *, timeout_s: float = 120.0, schema_hashes: Mapping[str, str] | None = None
) -> dict[str, dict[str, float]]:
    """Aggregate statistics (row count, nulls, mean/std) from each pod, signatures verified.

    ``schema_hashes`` (pod -> hash, from a listing the caller already has) saves asking the hub again.
    """
    if schema_hashes is None:
        schema_hashes = {p: info.schema_hash for p, info in (await client.registered(pods)).items()}
    cohort = await client.cohort(pods, schema_hashes=schema_hashes)
    task = build_task(modeller_id=client.key.key_id, cohort=cohort, kind="schema-stats")
    await client.submit_task(task, cohort)
    answers = await client.wait_results(task.task_id, pods, timeout_s=timeout_s)
    out: dict[str, dict[str, float]] = {}
    for pod, answer in answers.items():
        if not isinstance(answer, VerifiedResult):
            raise ModellerError(f"pod {pod!r} refused the schema-stats task ({answer})")
        if answer.payload.status != "done":
            raise ModellerError(f"pod {pod!r} failed the schema-stats task ({answer.payload.reason})")
        out[pod] = dict(answer.payload.metrics)
    return out
