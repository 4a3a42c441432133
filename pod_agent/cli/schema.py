"""``pod-agent schema``: print the schema inferred from the pod's datasource.

Owns the table and JSON renderings; inference itself is ``pod_agent.data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pod_agent.config import load_settings
from pod_agent.data import Schema, open_datasource

# Categories shown per column in the table; --json has them all.
_SHOWN_CATEGORIES = 6


def schema(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (all categories, row count, hash)."),
) -> None:
    """Infer the datasource's schema in one streaming pass and print it."""
    settings = load_settings(config)
    inferred = open_datasource(settings.datasource).schema()
    if as_json:
        typer.echo(json.dumps({**inferred.model_dump(), "hash": inferred.hash()}, indent=2))
    else:
        typer.echo(render_table(inferred))


def render_table(inferred: Schema) -> str:
    header = ("column", "stype", "arrow type", "categories")
    rows = [header] + [
        (c.name, c.stype, c.arrow_type, _categories(c.categories)) for c in inferred.columns
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * len(header[3]))
    lines.append(f"{inferred.row_count} rows, {len(inferred.columns)} columns, schema hash {inferred.hash()}")
    return "\n".join(line.rstrip() for line in lines)


def _categories(categories: list[str] | None) -> str:
    if categories is None:
        return ""
    shown = ", ".join(categories[:_SHOWN_CATEGORIES])
    more = f", ... ({len(categories)} in all)" if len(categories) > _SHOWN_CATEGORIES else ""
    return shown + more


def register(app: typer.Typer) -> None:
    app.command("schema")(schema)
