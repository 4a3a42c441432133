"""The ``pod-agent`` command: one typer app, one module per command, each imported only when run.

Each command module exposes ``register(app)``; this module only assembles them
and owns the single place where a ``PodAgentError`` becomes one line on stderr
and an exit code (no tracebacks for operator mistakes). Start-up stays quick
because a command's module (with its imports: aiohttp, pandas, the daemon) is
imported only when that command runs: ``pod-agent --help`` lists the commands
from ``COMMANDS``' one-line help, which a test keeps equal to each command's own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    # typer vendors click and exposes these types only from there.
    from typer._click import Command, Context, HelpFormatter

from pod_agent import __version__
from pod_agent.errors import PodAgentError


@dataclass(frozen=True)
class _Command:
    module: str
    help: str  # what `pod-agent --help` lists, without importing the module


# Commands, in the order `pod-agent --help` lists them.
COMMANDS: dict[str, _Command] = {
    "demo": _Command(
        "pod_agent.cli.demo",
        "Start an embedded hub and three sandboxed pods, run secure FedAvg, compare with central training.",
    ),
    "init": _Command(
        "pod_agent.cli.init", "Write a commented pod.toml and a new identity key (mode 0600) in the state directory."
    ),
    "check": _Command(
        "pod_agent.cli.check",
        "Validate the config, identity key, datasource, sandbox layers, free ports and hub reachability; exit 1 if any "
        "fails.",
    ),
    "schema": _Command(
        "pod_agent.cli.schema",
        "Infer the datasource's schema in one streaming pass and print it, with why each column got its stype.",
    ),
    "datasets": _Command("pod_agent.cli.datasets", "Write public example tables."),
    "keys": _Command("pod_agent.cli.keys", "Show or rotate the pod's identity key, or generate a modeller key."),
    "peers": _Command("pod_agent.cli.peers", "Secure-aggregation peers this pod trusts; the federation roster."),
    "run": _Command("pod_agent.cli.run", "Run the agent: register with the hub, take signed tasks, return results."),
    "tasks": _Command("pod_agent.cli.tasks", "What ran on this pod's data: tasks, outcomes, who signed them."),
    "review": _Command("pod_agent.cli.review", "Review model code before it runs on this pod (security.review)."),
    "privacy": _Command(
        "pod_agent.cli.privacy", "This pod's differential-privacy budgets and what they have paid for."
    ),
    "hub": _Command("pod_agent.cli.hub", "Run and administer the reference hub."),
    "modeller": _Command("pod_agent.cli.modeller", "Modeller side: register, list pods, submit tasks, fetch results."),
}


def load_command(name: str) -> Command:
    """The click command ``name`` as its module registers it (importing that module only)."""
    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """A callback makes typer build a group even for a module registering a single command."""

    import_module(COMMANDS[name].module).register(app)
    group = typer.main.get_command(app)
    if not isinstance(group, TyperGroup) or name not in group.commands:
        raise RuntimeError(f"{COMMANDS[name].module}.register() does not add the command {name!r}")
    return group.commands[name]


class _LazyGroup(TyperGroup):
    """Lists commands from ``COMMANDS``; imports a command's module only when it is looked up to run."""

    _listing = False  # while help is formatted, a lookup answers a stub carrying the one-line help

    def list_commands(self, ctx: Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        if self._listing:
            return TyperCommand(cmd_name, help=entry.help)
        return load_command(cmd_name)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pod-agent {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="pod-agent",
        cls=_LazyGroup,
        help="Federated-learning agent for a data host: runs signed, sandboxed models next to the data.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        """pod-agent: data stays on this host; only checked, aggregated updates leave it."""

    return app


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv, standalone_mode=True)
    except PodAgentError as exc:
        typer.echo(f"pod-agent: error: {exc}", err=True)
        sys.exit(exc.exit_code)
