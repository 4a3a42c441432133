"""``pod-agent schema``: print the schema inferred from the pod's datasource.

Owns the table and JSON renderings, each column with why it got its stype (``data.stype_reason``)
and, for integer columns taken as categorical, the force_stypes line that makes them numbers;
inference itself is ``pod_agent.data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pod_agent.config import DatasourceSection, load_settings
from pod_agent.data import Schema, open_datasource, stype_reason

# Categories shown per column in the table; --json has them all.
_SHOWN_CATEGORIES = 6


def schema(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (all categories, row count, hash, why)."),
) -> None:
    """Infer the datasource's schema in one streaming pass and print it, with why each column got its stype."""
    settings = load_settings(config)
    inferred = open_datasource(settings.datasource).schema()
    why = reasons(inferred, settings.datasource)
    if as_json:
        typer.echo(json.dumps({**inferred.model_dump(), "hash": inferred.hash(), "why": why}, indent=2))
    else:
        typer.echo(render_table(inferred, why))


def reasons(inferred: Schema, section: DatasourceSection) -> dict[str, str]:
    """Each column's ``stype_reason`` under the datasource's force_stypes and categorical_max_unique."""
    forced = {name: stype for stype, names in section.force_stypes.items() for name in names}
    return {
        c.name: stype_reason(c, forced=forced.get(c.name), max_unique=section.categorical_max_unique)
        for c in inferred.columns
    }


def render_table(inferred: Schema, why: dict[str, str]) -> str:
    header = ("column", "stype", "arrow type", "why", "categories")
    rows = [header] + [
        (c.name, c.stype, c.arrow_type, why[c.name], _categories(c.categories)) for c in inferred.columns
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * len(header[4]))
    lines.append(f"{inferred.row_count} rows, {len(inferred.columns)} columns, schema hash {inferred.hash()}")
    counted = [c.name for c in inferred.columns if c.stype == "categorical" and "distinct integers" in why[c.name]]
    if counted:
        # Integer codes with few values (education-num) are the usual surprise: say how to make them numbers.
        listed = ", ".join(json.dumps(name) for name in counted)
        lines.append(
            f"integer columns taken as categorical: {', '.join(counted)}; to treat them as numbers, set under "
            f"[datasource] in pod.toml: force_stypes = {{ continuous = [{listed}] }}"
        )
    return "\n".join(line.rstrip() for line in lines)


def _categories(categories: list[str] | None) -> str:
    if categories is None:
        return ""
    shown = ", ".join(categories[:_SHOWN_CATEGORIES])
    more = f", ... ({len(categories)} in all)" if len(categories) > _SHOWN_CATEGORIES else ""
    return shown + more


def register(app: typer.Typer) -> None:
    app.command("schema")(schema)
