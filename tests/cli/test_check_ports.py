"""`pod-agent check` beside a running agent: its own agent's health port is reported as in use by it, any
other holder of the port still fails the check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pod_agent.cli.check import CHECKS, CheckResult, run_checks
from pod_agent.ops import AgentMetrics, HealthServer, Readiness


def _ports_check(config: Path, port: int) -> CheckResult:
    """The ports check (after the config check it needs) on ``config`` with its health endpoint on ``port``."""
    config.write_text(config.read_text().replace("health_port = 0", f"health_port = {port}"))
    checks = [check for check in CHECKS if check.name in ("config", "ports")]
    results = run_checks(config, checks)
    assert results[0].status == "ok", results[0].detail
    return results[1]


async def _check_beside(server_pod: str, small_pod_config: Callable[..., Path]) -> CheckResult:
    config = small_pod_config("clinic", "http://127.0.0.1:9", security="", limits="")
    async with HealthServer(metrics=AgentMetrics(), readiness=Readiness(), port=0, pod=server_pod) as agent:
        assert agent.port is not None
        # The check blocks on its probe of /healthz: run it off the loop that serves the endpoint.
        return await asyncio.to_thread(_ports_check, config, agent.port)


async def test_check_reports_the_port_in_use_by_this_pods_running_agent(
    small_pod_config: Callable[..., Path],
) -> None:
    result = await _check_beside("clinic", small_pod_config)
    assert result.status == "ok"
    assert result.detail.endswith("is in use by this pod's running agent")


async def test_check_fails_a_port_held_by_another_pods_agent(small_pod_config: Callable[..., Path]) -> None:
    result = await _check_beside("other-clinic", small_pod_config)
    assert result.status == "FAIL"
    assert "is taken (another pod-agent on this host?): set ops.health_port" in result.detail
