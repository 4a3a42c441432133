"""``pod-agent demo``: the whole federated loop on this machine, on the Adult census table."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for data, logs, final model and report."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Federated rounds."),
    epochs_per_round: int = typer.Option(1, "--epochs-per-round", min=1, help="Local epochs on each pod per round."),
    secure: bool = typer.Option(True, "--secure/--plain", help="Secure aggregation (pairwise masks) or plain FedAvg."),
    dp_epsilon: float | None = typer.Option(
        None, "--dp-epsilon", min=0.01,
        help="Train under differential privacy: each pod's budget for the run, enforced by the pods.",
    ),
) -> None:
    """Start an embedded hub and three sandboxed pods, run secure FedAvg, compare with central training."""
    from pod_agent.demo import DemoOptions, run_demo

    options = DemoOptions(out_dir=out, rounds=rounds, epochs_per_round=epochs_per_round, secure=secure,
                          dp_epsilon=dp_epsilon)
    run_demo(options, echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
