"""``pod-agent init``: a commented pod.toml and the pod's Ed25519 identity key.

Owns choosing the first values (name, data path, state dir) and refusing to overwrite an
existing config or key without ``--force``. The file's text comes from
``pod_agent.config.template``; the key file format and its 0600 mode from
``pod_agent.protocol.keys``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import typer

from pod_agent.config import load_settings, render_pod_toml
from pod_agent.errors import ConfigError
from pod_agent.protocol import IdentityKey, passphrase_from_env

_NAME_CHARS = re.compile(r"[^a-z0-9_-]+")


def _default_name() -> str:
    name = _NAME_CHARS.sub("-", socket.gethostname().lower()).strip("-_")[:63]
    return name or "pod"


def init(
    config: Path = typer.Option(Path("pod.toml"), "--config", help="Where to write pod.toml."),
    name: str = typer.Option("", "--name", help="Pod name (default: from the host name)."),
    data: Path = typer.Option(Path("data/table.csv"), "--data", help="The table: CSV, Parquet file or directory."),
    state_dir: Path = typer.Option(Path("/var/lib/pod-agent"), "--state-dir", help="State directory (key, SQLite)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing pod.toml and identity key."),
) -> None:
    """Write a commented pod.toml and a new identity key (mode 0600) in the state directory."""
    if config.exists() and not force:
        raise ConfigError(f"{config} already exists - edit it, or pass --force to replace it")
    text = render_pod_toml(
        name=name or _default_name(), state_dir=state_dir.absolute(), data_path=data.absolute()
    )
    config.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.with_name(f".{config.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        settings = load_settings(tmp)
        key_path = settings.pod.identity_key_path
        if key_path.exists() and not force:
            raise ConfigError(f"identity key {key_path} already exists - keep it, or pass --force to replace it")
        settings.pod.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = IdentityKey.generate()
        key.save(key_path, passphrase_from_env(settings.pod.identity_key_passphrase_env), overwrite=force)
        tmp.replace(config)
    finally:
        tmp.unlink(missing_ok=True)
    typer.echo(f"wrote {config} (pod {settings.pod.name!r}); edit [datasource] and [security] next")
    typer.echo(f"identity key {key_path} (mode 0600), key id {key.key_id}")
    typer.echo(f"then: pod-agent check --config {config}")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
