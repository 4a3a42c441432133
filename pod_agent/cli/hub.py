"""``pod-agent hub``: serve the reference hub (pod_agent.hub), bound to 127.0.0.1 by default;
``release-pod`` frees a pod name held by an old key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from pod_agent.hub.runner import DEFAULT_HOST, DEFAULT_PORT
from pod_agent.ops import configure_logging

_hub = typer.Typer(name="hub", help="Run and administer the reference hub.", no_args_is_help=True)


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


@_hub.command("release-pod")
def release_pod(
    name: str = typer.Argument(..., help="The pod name to free."),
    db: str = typer.Option("hub.sqlite", "--db", help="The hub's SQLite file (the hub may keep running)."),
) -> None:
    """Forget a pod's registration so it can register again with a new key (after re-keying).

    A pod name belongs to the first key that registers it; nothing over the network can move it.
    Its stored tasks and results stay.
    """
    from pod_agent.errors import HubError
    from pod_agent.hub import SqliteStorage

    if db == ":memory:" or not Path(db).is_file():
        raise HubError(f"no hub database at {db}; give the --db the hub serves")
    storage = SqliteStorage(db)
    try:
        if not storage.release_pod(name):
            raise HubError(f"no pod named {name!r} in {db}; `pod-agent modeller pods` lists them")
    finally:
        storage.close()
    typer.echo(f"released pod name {name!r}: the next key to register it takes it")


def register(app: typer.Typer) -> None:
    app.add_typer(_hub)
