"""``pod-agent keys``: show the pod's identity key, generate a modeller key, rotate the pod's key.

``rotate`` writes a new identity key and the statement announcing it, signed by the old one
(``pod_agent.protocol.rotation``).

Also owns ``modeller_entry``, the pod.toml entry for a modeller key (``pod-agent modeller keys`` prints it too).

Only prints public halves; private keys go to files with mode 0600 (``pod_agent.protocol.keys``).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import typer

from pod_agent.config import load_settings
from pod_agent.errors import KeyFileError
from pod_agent.modeller import pin_line
from pod_agent.protocol import (
    DEFAULT_OVERLAP_S,
    IdentityKey,
    KeyRotation,
    PublicKey,
    envelope_bytes,
    passphrase_from_env,
    rotation_statement,
)

_keys = typer.Typer(
    name="keys", help="Show or rotate the pod's identity key, or generate a modeller key.", no_args_is_help=True
)


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


@_keys.command("rotate")
def rotate(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
    overlap_days: float = typer.Option(
        DEFAULT_OVERLAP_S / 86400, "--overlap-days", min=0,
        help="How long modellers who pinned the old key still accept results signed under it.",
    ),
) -> None:
    """Replace the pod's identity key; write the new key announced in a statement the old key signs."""
    settings = load_settings(config)
    path = settings.pod.identity_key_path
    passphrase = passphrase_from_env(settings.pod.identity_key_passphrase_env)
    old = IdentityKey.load(path, passphrase)
    new = IdentityKey.generate()
    statement = rotation_statement(pod=settings.pod.name, old=old, new=new.public, now=int(time.time()),
                                   overlap_s=int(overlap_days * 86400))
    out = settings.pod.state_dir / f"key-rotation-{new.key_id[:16]}.json"
    # The statement first: were the key replaced and the statement lost, pinned modellers could not follow.
    try:
        out.write_bytes(envelope_bytes(statement))
    except OSError as exc:
        raise KeyFileError(f"cannot write the rotation statement {out} ({exc.strerror}): check the state_dir") from exc
    # The old private key is not kept: a rotation is often made because it may have leaked.
    new.save(path, passphrase, overwrite=True)
    until = datetime.fromtimestamp(KeyRotation.model_validate(statement.payload).overlap_until, UTC)
    typer.echo(f"new key:    {new.public.to_b64()} (key id {new.key_id}), written to {path}")
    typer.echo(f"statement:  {out} (signed by the old key {old.key_id[:16]})")
    typer.echo(f"pin line:   {pin_line(settings.pod.name, new.public.to_b64())}")
    typer.echo(f"Restart the agent (`systemctl restart pod-agent`) so it registers the new key. Modellers who pinned "
               f"the old key verify the statement with it, and accept results under the old key until "
               f"{until:%Y-%m-%d %H:%M} UTC.")


def register(app: typer.Typer) -> None:
    app.add_typer(_keys)
