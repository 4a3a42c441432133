"""``pod-agent datasets``: write public tables for the demo and for trying a pod out.

The tables themselves come from ``pod_agent.data`` (``adult.py``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from pod_agent.data import write_adult

_datasets = typer.Typer(name="datasets", help="Write public example tables.", no_args_is_help=True)


@_datasets.command("adult")
def adult(
    out: Path = typer.Option(..., "--out", help="Directory for adult.csv and adult.parquet."),
) -> None:
    """The UCI Adult census-income table (48,842 rows, target column TARGET) as CSV and Parquet."""
    files = write_adult(out)
    typer.echo(f"wrote {files.csv}")
    typer.echo(f"wrote {files.parquet}")


def register(app: typer.Typer) -> None:
    app.add_typer(_datasets)
