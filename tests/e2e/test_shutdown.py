"""SIGTERM stops the agent gracefully with exit 0; a second signal exits at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from task_support import cohort_of, entries

from pod_agent.modeller import ModellerClient, build_task

pytestmark = pytest.mark.slow

from e2e_support import Cluster, FaultProxy, async_wait_for  # type: ignore[import-not-found]  # noqa: E402


async def test_second_signal_exits_at_once_while_the_first_waits_for_a_stuck_upload(
    cluster: Cluster, fault_proxy: FaultProxy, small_csv: Path
) -> None:
    agent = cluster.add_pod(
        "pod-a", small_csv, hub_url=fault_proxy.url, grace_s=60.0, request_timeout_s=60.0
    )
    await async_wait_for(lambda: cluster.online("pod-a"), what="pod registered")
    fault_proxy.set_mode("swallow_results")
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        schema_hash = (await client.pods())[0].schema_hash
        task = build_task(modeller_id=client.key.key_id, cohort=entries(["pod-a"], schema_hash), kind="schema-stats")
        await client.submit_task(task, cohort_of(task))
    await async_wait_for(lambda: agent.task_status(task.task_id) == "done", what="result produced")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    # The first signal waits (up to 60 s of grace) for the upload the proxy never answers.
    time.sleep(1.0)
    assert agent.proc.poll() is None
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(5) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 2.0
    assert "send again to exit at once" in agent.log_text()


def test_sigterm_with_nothing_running_exits_0_promptly(cluster: Cluster, small_csv: Path) -> None:
    agent = cluster.add_pod("pod-a", small_csv)
    deadline = time.monotonic() + 20
    while not cluster.online("pod-a") and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - started < 3.0
