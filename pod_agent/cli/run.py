"""``pod-agent run --config pod.toml``: the long-running agent (see pod_agent.agent.daemon)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from pod_agent.config import load_settings
from pod_agent.ops import bind_health_socket, configure_logging
from pod_agent.sandbox import check_worker_package


def run(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
    log_format: str | None = typer.Option(None, "--log-format", help="text or json (default: ops.log_format)."),
) -> None:
    """Run the agent: register with the hub, take signed tasks, return results. SIGTERM stops it."""
    # First: run from the wrong pod_agent tree, the agent would bind one tree into the sandbox while its
    # workers import another, and every task would fail with nothing saying why.
    check_worker_package()
    settings = load_settings(config)
    if settings.ops.health_port:
        # A taken port (a second pod on this host) is said now, in one line, not after the start-up work;
        # the daemon binds it again and says the same if it was taken in between.
        bind_health_socket(settings.ops.health_host, settings.ops.health_port).close()
    configure_logging(fmt=log_format or settings.ops.log_format, level=settings.ops.log_level)  # type: ignore[arg-type]
    # Imported here so `pod-agent --help` stays quick; the daemon itself never imports torch.
    from pod_agent.agent import run_agent

    asyncio.run(run_agent(settings, config_path=config))  # SIGHUP re-reads its policy sections


def register(app: typer.Typer) -> None:
    app.command("run")(run)
