"""``pod-agent privacy show``: each differential-privacy budget of this pod, spent, reserved and left.

Reads the privacy ledger in the state database (``pod_agent.state``) next to a running agent
(SQLite WAL: readers never block it) and the budgets in pod.toml; the epsilon figures are
``pod_agent.policy.budget_report``'s. It changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from pod_agent.config import load_settings
from pod_agent.errors import StateError
from pod_agent.policy import budget_report
from pod_agent.state import PodState

_privacy = typer.Typer(name="privacy", help="This pod's differential-privacy budgets and what they have paid for.",
                       no_args_is_help=True)


@_privacy.command("show")
def show(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Per modeller and per dataset: the budget, epsilon spent (charged), reserved by queued tasks, and left."""
    settings = load_settings(config)
    path = settings.pod.state_dir / "state.sqlite"
    if not path.is_file():
        raise StateError(f"no state database at {path}: the agent has not run with this state_dir yet")
    with PodState.open(path) as state:
        entries = state.ledger()
    report = budget_report(settings.privacy, settings.security.modellers, entries)
    if as_json:
        typer.echo(json.dumps([asdict(use) | {"left": use.left} for use in report], indent=2))
        return
    if not report:
        typer.echo("no differential-privacy budgets: give a modeller dp = { epsilon = ..., delta = ... } in pod.toml")
        return
    for use in report:
        typer.echo(
            f"{use.budget:<28} epsilon {use.spent:7.3f} spent, {use.committed - use.spent:7.3f} reserved, "
            f"{use.left:7.3f} left of {use.epsilon:g} (delta {use.delta:g}); {use.releases} releases, "
            f"{use.reserved} pending, {use.unaccounted} unaccounted"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(_privacy)
