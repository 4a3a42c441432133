"""Faults with real processes on loopback: every result is delivered exactly once, nothing lost.

Hub killed and restarted mid-task; the hub's address answering 500s and resetting
connections for a while; the agent SIGKILLed after its result was produced and
before the upload was acknowledged, then restarted; a task replayed by the hub.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from e2e_support import AgentProcess, Cluster, FaultProxy, async_wait_for  # type: ignore[import-not-found]

from pod_agent.modeller import ModellerClient, VerifiedResult, build_task

pytestmark = pytest.mark.slow



async def _submit(client: ModellerClient, pods: list[str]) -> str:
    # Each pod as the hub lists it (schema hash, key id): a restarted hub rebuilds the cohort from those.
    cohort = await client.cohort(pods)
    task = build_task(modeller_id=client.key.key_id, cohort=cohort, kind="schema-stats")
    return await client.submit_task(task, cohort)


async def _one_result_each(cluster: Cluster, client: ModellerClient, task_id: str, pods: list[str]) -> None:
    answers = await client.wait_results(task_id, pods, timeout_s=30)
    for pod in pods:
        answer = answers[pod]
        assert isinstance(answer, VerifiedResult) and answer.payload.status == "done", answer
    rows = cluster.hub.results(task_id)
    assert sorted(pod for pod, _ in rows) == sorted(pods)


async def test_hub_killed_and_restarted_mid_task_loses_and_duplicates_nothing(
    cluster: Cluster, fault_proxy: FaultProxy, small_csv: Path
) -> None:
    agents = [cluster.add_pod(name, small_csv, hub_url=fault_proxy.url) for name in ("pod-a", "pod-b")]
    await async_wait_for(lambda: cluster.online("pod-a", "pod-b"), what="pods registered")
    # Results are produced but their uploads are held, so the hub dies with the task unfinished.
    fault_proxy.set_mode("stall_results")
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        task_id = await _submit(client, ["pod-a", "pod-b"])
    await async_wait_for(lambda: all(a.task_status(task_id) == "done" for a in agents), what="results produced")
    # "done" is written before the outbox tries the upload: wait until both uploads are held
    # in the proxy, else a pod that first tries after the kill never exercises the held upload.
    await async_wait_for(lambda: fault_proxy.stalled >= 2, what="both result uploads held")
    assert cluster.hub.results(task_id) == []
    cluster.hub.kill()
    await asyncio.sleep(0.3)
    cluster.hub.start()
    fault_proxy.set_mode("pass")
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        await _one_result_each(cluster, client, task_id, ["pod-a", "pod-b"])
        # The restarted hub has the pods back (re-registered on reconnect) and they take new tasks.
        second = await _submit(client, ["pod-a", "pod-b"])
        await _one_result_each(cluster, client, second, ["pod-a", "pod-b"])
    for agent in agents:
        await async_wait_for(lambda agent=agent: agent.task_status(task_id) == "delivered", what="delivered")
        assert agent.terminate() == 0


async def test_hub_answering_500s_and_resetting_connections_heals_without_duplicates(
    cluster: Cluster, fault_proxy: FaultProxy, small_csv: Path
) -> None:
    agent = cluster.add_pod("pod-a", small_csv, hub_url=fault_proxy.url)
    await async_wait_for(lambda: cluster.online("pod-a"), what="pod registered through the proxy")
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        fault_proxy.set_mode("http500")
        first = await _submit(client, ["pod-a"])
        await asyncio.sleep(1.0)
        fault_proxy.set_mode("reset")
        second = await _submit(client, ["pod-a"])
        await asyncio.sleep(1.0)
        assert cluster.hub.results(first) == cluster.hub.results(second) == []
        fault_proxy.set_mode("pass")
        await _one_result_each(cluster, client, first, ["pod-a"])
        await _one_result_each(cluster, client, second, ["pod-a"])
    assert "hub link down" in agent.log_text()
    assert agent.terminate() == 0


async def test_agent_killed_before_its_upload_was_acknowledged_delivers_once_after_restart(
    cluster: Cluster, fault_proxy: FaultProxy, small_csv: Path
) -> None:
    agent = cluster.add_pod("pod-a", small_csv, hub_url=fault_proxy.url)
    await async_wait_for(lambda: cluster.online("pod-a"), what="pod registered through the proxy")
    fault_proxy.set_mode("swallow_results")
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        task_id = await _submit(client, ["pod-a"])
        # The hub stores the upload but the pod never hears back: kill it right there.
        await async_wait_for(lambda: cluster.hub.results(task_id), what="upload reached the hub")
        assert agent.task_status(task_id) == "done"
        agent.kill()
        fault_proxy.set_mode("pass")
        restarted = AgentProcess(agent.name, agent.config, agent.state_dir, agent.log).start()
        cluster.agents.append(restarted)
        await async_wait_for(lambda: restarted.task_status(task_id) == "delivered", what="outbox drained after restart")
        await _one_result_each(cluster, client, task_id, ["pod-a"])
    assert fault_proxy.swallowed >= 1
    assert restarted.state("SELECT count(*) FROM outbox")[0][0] == 0
    assert restarted.terminate() == 0


async def test_task_replayed_by_the_hub_is_refused_and_not_run_again(cluster: Cluster, small_csv: Path) -> None:
    agent = cluster.add_pod("pod-a", small_csv)
    await async_wait_for(lambda: cluster.online("pod-a"), what="pod registered")
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        task_id = await _submit(client, ["pod-a"])
        await _one_result_each(cluster, client, task_id, ["pod-a"])
        await async_wait_for(lambda: agent.task_status(task_id) == "delivered", what="result acknowledged")
        # A hub (here: its database, then a restart) hands the same signed task out again.
        cluster.hub.kill()
        cluster.hub.query("UPDATE deliveries SET acked_at = NULL WHERE task_id = ?", (task_id,))
        cluster.hub.start()
        await async_wait_for(
            lambda: cluster.hub.query("SELECT refusal FROM deliveries WHERE task_id = ?", (task_id,))[0][0],
            what="refusal reported",
        )
        status = await client.status(task_id)
    assert status.pods["pod-a"]["refusal"] == "replay"
    assert len(cluster.hub.results(task_id)) == 1
    history = agent.state("SELECT to_status FROM task_events WHERE task_id = ?", (task_id,))
    assert [h[0] for h in history].count("running") == 1
    assert agent.terminate() == 0
