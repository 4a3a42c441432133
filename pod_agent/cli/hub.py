"""``pod-agent hub serve``: the reference hub (pod_agent.hub), bound to 127.0.0.1 by default."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from pod_agent.hub.runner import DEFAULT_HOST, DEFAULT_PORT
from pod_agent.ops import configure_logging

_hub = typer.Typer(name="hub", help="Run the reference hub.", no_args_is_help=True)


@_hub.command("serve")
def serve(
    db: str = typer.Option("hub.sqlite", "--db", help="SQLite file (blobs go to <db>.blobs/), or :memory:."),
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to bind; 127.0.0.1 unless you mean it."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port (0 picks a free one and prints it)."),
    cert: Path | None = typer.Option(None, "--cert", help="PEM certificate chain: serve HTTPS."),
    key: Path | None = typer.Option(None, "--key", help="PEM private key of --cert."),
    log_format: str = typer.Option("text", "--log-format", help="text or json."),
) -> None:
    """Serve the hub until SIGTERM/SIGINT; prints `hub listening on URL` once bound."""
    configure_logging(fmt=log_format, level="INFO")  # type: ignore[arg-type]
    from pod_agent.hub.runner import serve as run_hub

    def announce(url: str) -> None:
        typer.echo(f"hub listening on {url}")

    asyncio.run(run_hub(db=db, host=host, port=port, cert=cert, key=key, on_listening=announce))


def register(app: typer.Typer) -> None:
    app.add_typer(_hub)
