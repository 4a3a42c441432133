"""Health, readiness and metrics endpoint, served for real on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from pod_agent.ops import AgentMetrics, HealthServer, Readiness, health


async def _get(server: HealthServer, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}{path}") as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_healthz_answers_ok_on_loopback_port_zero() -> None:
    async with HealthServer(metrics=AgentMetrics(), readiness=Readiness(), port=0) as server:
        assert server.port and server.port > 0
        status, _, body = await _get(server, "/healthz")
    assert status == 200
    assert '"status": "ok"' in body
    assert '"pod"' not in body


async def test_healthz_names_the_pod_it_serves() -> None:
    async with HealthServer(metrics=AgentMetrics(), readiness=Readiness(), port=0, pod="clinic") as server:
        status, _, body = await _get(server, "/healthz")
        assert await asyncio.to_thread(health.pod_on_health_port, "127.0.0.1", server.port or 0) == "clinic"
    assert status == 200
    assert '"pod": "clinic"' in body


async def test_healthz_reports_a_stalled_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "LOOP_PROBE_INTERVAL_S", 0.05)
    monkeypatch.setattr(health, "LOOP_LAG_LIMIT_S", 0.2)
    metrics = AgentMetrics()
    async with HealthServer(metrics=metrics, readiness=Readiness(), port=0) as server:
        await asyncio.sleep(0.01)  # let the probe start its first tick
        time.sleep(0.4)  # blocks the event loop on purpose, as a stuck daemon would
        await asyncio.sleep(0.1)
        status, _, body = await _get(server, "/healthz")
    assert status == 503
    assert "loop stalled" in body


async def test_readyz_lists_what_is_missing_until_all_conditions_hold() -> None:
    readiness = Readiness(sandbox_required="strict")
    async with HealthServer(metrics=AgentMetrics(), readiness=readiness, port=0) as server:
        status, _, body = await _get(server, "/readyz")
        assert status == 503
        assert "not registered with the hub" in body and "hub not connected" in body
        assert "sandbox level unprobed below required strict" in body

        readiness.registered = readiness.hub_connected = True
        readiness.sandbox_level = "standard"
        status, _, body = await _get(server, "/readyz")
        assert status == 503
        assert "sandbox level standard below required strict" in body

        readiness.sandbox_level = "strict"
        status, _, body = await _get(server, "/readyz")
    assert status == 200
    assert '"missing": []' in body


def test_stronger_sandbox_satisfies_weaker_requirement() -> None:
    assert Readiness(sandbox_required="standard", sandbox_level="strict").sandbox_satisfied()
    assert not Readiness(sandbox_required="strict", sandbox_level="none").sandbox_satisfied()
    assert not Readiness(sandbox_required="none", sandbox_level="something-else").sandbox_satisfied()


async def test_metrics_endpoint_serves_prometheus_text() -> None:
    metrics = AgentMetrics()
    metrics.task_finished("train", "done", 12.0)
    async with HealthServer(metrics=metrics, readiness=Readiness(), port=0) as server:
        status, content_type, body = await _get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert 'pod_agent_tasks_total{kind="train",outcome="done"} 1.0' in body


async def test_no_other_routes_exist() -> None:
    async with HealthServer(metrics=AgentMetrics(), readiness=Readiness(), port=0) as server:
        status, _, _ = await _get(server, "/shutdown")
    assert status == 404


async def test_stopped_server_frees_its_port() -> None:
    server = HealthServer(metrics=AgentMetrics(), readiness=Readiness(), port=0)
    await server.start()
    port = server.port
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectorError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/healthz")
