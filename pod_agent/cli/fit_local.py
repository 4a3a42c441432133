"""``pod-agent modeller fit-local``: train a model on a local CSV/Parquet file as a pod would.

Owns only the command line; the work is ``pod_agent.training.local.fit_local``, imported
when the command runs so that the daemon's CLI never loads torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from pod_agent.errors import ConfigError
from pod_agent.protocol import DataSelection, Hyperparameters, Split, model_from_file


def fit_local_cmd(
    model_file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Model source (.py) or declarative spec (.json)."
    ),
    data: Path = typer.Option(
        ..., "--data", exists=True, help="CSV or Parquet file (or a directory of Parquet files)."
    ),
    target: str = typer.Option(..., "--target", help="Target column."),
    class_name: str | None = typer.Option(
        None, "--class", help="Model class in the source (styles lightning, module)."
    ),
    style: str = typer.Option("lightning", "--style", help="lightning | module | declarative."),
    columns: str | None = typer.Option(None, "--columns", help="Comma-separated feature columns (default: all)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (give this or --steps; default 1 epoch)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps instead of epochs."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    learning_rate: float = typer.Option(1e-3, "--lr", min=0.0),
    seed: int = typer.Option(42, "--seed"),
    split_seed: int = typer.Option(0, "--split-seed"),
    weights: Path | None = typer.Option(None, "--weights", exists=True, help="Pretrained weights (.safetensors)."),
    encoding: str = typer.Option("one-hot", "--encoding", help="Categorical encoding: one-hot | hashed."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto | cpu | gpu."),
    out: Path | None = typer.Option(None, "--out", help="Write model.safetensors and metrics.json here."),
) -> None:
    """Train MODEL_FILE on a local table with the pod's data preparation and Trainer settings."""
    from pod_agent.training import fit_local, save_fit

    if style not in ("lightning", "module", "declarative"):
        raise ConfigError(f"--style {style!r} is not one of lightning, module, declarative")
    if encoding not in ("one-hot", "hashed"):
        raise ConfigError(f"--encoding {encoding!r} is not one of one-hot, hashed")
    if epochs is not None and steps is not None:
        raise ConfigError("give --epochs or --steps, not both")
    model = model_from_file(model_file, style=style, class_name=class_name)  # type: ignore[arg-type]
    encoding_choice: Literal["one-hot", "hashed"] = "hashed" if encoding == "hashed" else "one-hot"
    selection = DataSelection(
        target=target,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        split=Split(seed=split_seed),
        categorical_encoding=encoding_choice,
    )
    hyper = Hyperparameters(
        epochs=epochs if epochs is not None or steps is not None else 1,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )

    def show(event: dict[str, object]) -> None:
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in event.items() if k != "metrics"]
        metrics = event.get("metrics")
        if isinstance(metrics, dict):
            parts += [f"{k}={v:.4f}" for k, v in metrics.items()]
        typer.echo("  " + " ".join(parts))

    fit = fit_local(model, data=data, selection=selection, hyperparameters=hyper, weights=weights,
                    accelerator=accelerator, on_progress=show)
    typer.echo(f"trained on {fit.n_rows} rows; input_size={fit.datastructure['input_size']}")
    for name, value in sorted(fit.metrics.items()):
        typer.echo(f"{name:>20}  {value:.4f}")
    if out is not None:
        typer.echo(f"weights written to {save_fit(fit, out)}")


def register(app: typer.Typer) -> None:
    app.command("fit-local")(fit_local_cmd)
