"""The ``pod-agent`` command: one typer app, one module per command.

Each command module exposes ``register(app)``; this module only assembles them
and owns the single place where a ``PodAgentError`` becomes one line on stderr
and an exit code (no tracebacks for operator mistakes).
"""

from __future__ import annotations

import sys
from importlib import import_module

import typer

from pod_agent import __version__
from pod_agent.errors import PodAgentError

# Command modules, in the order `pod-agent --help` lists them.
_COMMAND_MODULES: tuple[str, ...] = (
    "pod_agent.cli.demo",
    "pod_agent.cli.init",
    "pod_agent.cli.check",
    "pod_agent.cli.schema",
    "pod_agent.cli.datasets",
    "pod_agent.cli.keys",
    "pod_agent.cli.peers",
    "pod_agent.cli.run",
    "pod_agent.cli.tasks",
    "pod_agent.cli.privacy",
    "pod_agent.cli.hub",
    "pod_agent.cli.modeller",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pod-agent {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="pod-agent",
        help="Federated-learning agent for a data host: runs signed, sandboxed models next to the data.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ) -> None:
        """pod-agent: data stays on this host; only checked, aggregated updates leave it."""

    for name in _COMMAND_MODULES:
        import_module(name).register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv, standalone_mode=True)
    except PodAgentError as exc:
        typer.echo(f"pod-agent: error: {exc}", err=True)
        sys.exit(exc.exit_code)
