"""``pod-agent keys``: show the pod's identity key, generate a modeller key.

Also owns ``modeller_entry``, the pod.toml entry for a modeller key (``pod-agent modeller keys`` prints it too).

Only prints public halves; private keys go to files with mode 0600 (``pod_agent.protocol.keys``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pod_agent.config import load_settings
from pod_agent.modeller.pinning import pin_line
from pod_agent.protocol import IdentityKey, PublicKey, passphrase_from_env

_keys = typer.Typer(name="keys", help="Show the pod's identity key or generate a modeller key.", no_args_is_help=True)


@_keys.command("show")
def show(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
) -> None:
    """Print the pod's public key (base64), key id, and the pin line modellers put in their --pod-keys file."""
    settings = load_settings(config)
    key = IdentityKey.load(
        settings.pod.identity_key_path, passphrase_from_env(settings.pod.identity_key_passphrase_env)
    )
    typer.echo(f"pod:        {settings.pod.name}")
    typer.echo(f"key file:   {settings.pod.identity_key_path}")
    typer.echo(f"public key: {key.public.to_b64()}")
    typer.echo(f"key id:     {key.key_id}")
    typer.echo(f"pin line:   {pin_line(settings.pod.name, key.public.to_b64())}")


@_keys.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="Where to write the private key (PKCS8 PEM, mode 0600)."),
    passphrase_env: str | None = typer.Option(
        None, "--passphrase-env", help="Encrypt the key with the passphrase held by this environment variable."
    ),
    name: str = typer.Option("my-modeller", "--name", help="Name to put in the printed pod.toml entry."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key file."),
) -> None:
    """Make a modeller key; print its public key and the entry a pod owner adds to pod.toml."""
    passphrase = passphrase_from_env(passphrase_env)
    key = IdentityKey.generate()
    key.save(out, passphrase, overwrite=force)
    typer.echo(f"key file:   {out} (mode 0600{', encrypted' if passphrase else ''})")
    typer.echo(f"public key: {key.public.to_b64()}")
    typer.echo(f"key id:     {key.key_id}")
    typer.echo("")
    typer.echo(modeller_entry(name, key.public))


def modeller_entry(name: str, public: PublicKey) -> str:
    """The ``[[security.modellers]]`` entry a pod owner pastes into pod.toml to allow this modeller key."""
    return "\n".join([
        "A pod owner allows this key by adding to pod.toml:",
        "  [[security.modellers]]",
        f"  name = {json.dumps(name)}",
        f'  public_key = "{public.to_b64()}"',
        '  role = "general"   # or "super" to allow any model source',
    ])


def register(app: typer.Typer) -> None:
    app.add_typer(_keys)
