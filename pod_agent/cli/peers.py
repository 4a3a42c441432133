"""``pod-agent peers``: the secure-aggregation peers this pod trusts, and the federation roster.

show (pinned peers, roster peers, the roster's expiry), import (verify a signed roster under
the pinned federation key and install it), sign (the federation operator signs a roster of
pods). Verifying and merging are ``pod_agent.policy.peers``; the roster's shape is
``pod_agent.protocol.roster``. Pods files are TOML or JSON of ``name = "base64 key"``, the
pin lines ``pod-agent keys show`` prints on each pod.
"""

from __future__ import annotations

import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import typer
from pydantic import ValidationError

from pod_agent.config import load_settings
from pod_agent.errors import ConfigError, ProtocolError
from pod_agent.policy import TrustedPeers, install_roster
from pod_agent.protocol import (
    FederationRoster,
    IdentityKey,
    RosterPod,
    envelope_bytes,
    first_error,
    parse_json,
    passphrase_from_env,
    sign_envelope,
)

_DAY_S = 86_400
DEFAULT_ROSTER_DAYS = 30  # short enough that a removed pod drops out within a month unattended

_peers = typer.Typer(name="peers", help="Secure-aggregation peers this pod trusts; the federation roster.",
                     no_args_is_help=True)


@_peers.command("show")
def show(config: Path = typer.Option(..., "--config", help="The pod's pod.toml.")) -> None:
    """List the trusted peers (name, key id, pinned or from the roster) and the roster's expiry."""
    settings = load_settings(config)
    key = IdentityKey.load(
        settings.pod.identity_key_path, passphrase_from_env(settings.pod.identity_key_passphrase_env)
    )
    peers = TrustedPeers.from_settings(settings.privacy, own_name=settings.pod.name, own_key=key.public)
    typer.echo(render_peers(peers, own_name=settings.pod.name, roster_path=settings.privacy.federation_roster))


@_peers.command("import")
def import_roster(
    roster: Path = typer.Argument(..., help="The signed roster file from the federation's operator."),
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
) -> None:
    """Verify a roster under privacy.federation_key and install it at privacy.federation_roster (0644)."""
    settings = load_settings(config)
    installed = install_roster(roster, settings.privacy, now=int(time.time()))
    typer.echo(
        f"imported the roster of federation {installed.federation!r}: {len(installed.pods)} pods, "
        f"expires {_utc(installed.expires_at)}"
    )
    typer.echo(
        f"written to {settings.privacy.federation_roster} (mode 0644); the agent trusts its pods from its next start"
    )


@_peers.command("sign")
def sign(
    key: Path = typer.Option(
        ..., "--key", help="The federation's private key (PEM, e.g. from `pod-agent keys generate`)."
    ),
    federation: str = typer.Option(..., "--federation", help="The federation's name."),
    pods: Path = typer.Option(..., "--pods", help='TOML or JSON file of pod name = "base64 public key".'),
    out: Path = typer.Option(..., "--out", help="Where to write the signed roster (JSON)."),
    valid_days: int = typer.Option(DEFAULT_ROSTER_DAYS, "--valid-days", min=1, help="Days until the roster expires."),
    passphrase_env: str | None = typer.Option(None, "--passphrase-env", help="Env var holding the key passphrase."),
) -> None:
    """Sign a roster of the federation's pods with the federation key (the federation operator's command)."""
    signer = IdentityKey.load(key, passphrase_from_env(passphrase_env))
    now = int(time.time())
    listed = _roster_pods(pods)
    try:
        roster = FederationRoster(
            federation=federation, issued_at=now, expires_at=now + valid_days * _DAY_S, pods=listed
        )
    except ValidationError as exc:
        raise ConfigError(f"cannot sign the roster: {first_error(exc, root='roster')} - fix it and sign again") from exc
    try:
        out.write_bytes(envelope_bytes(sign_envelope(roster, signer)))
    except OSError as exc:
        raise ConfigError(f"cannot write {out} ({exc.strerror}): choose a writable --out") from exc
    typer.echo(
        f"signed the roster of federation {federation!r}: {len(roster.pods)} pods, expires {_utc(roster.expires_at)}"
    )
    typer.echo(f"written to {out}; pod owners import it with `pod-agent peers import {out.name} --config pod.toml`")
    typer.echo("after pinning the federation key in their pod.toml [privacy] table:")
    typer.echo(f'  federation_key = "{signer.public.to_b64()}"')


def render_peers(peers: TrustedPeers, *, own_name: str, roster_path: Path | None) -> str:
    """The peers as a table (this pod first), with the roster's line above and any overridden roster entries below."""
    roster = peers.roster
    if roster is None:
        lines = ["federation roster: none configured (privacy.federation_key and privacy.federation_roster)"]
    else:
        lines = [
            f"federation roster: {roster.federation!r} from {roster_path}, issued {_utc(roster.issued_at)}, "
            f"expires {_utc(roster.expires_at)}"
        ]

    def source(name: str) -> str:
        return "this pod" if name == own_name else "roster" if name in peers.roster_names else "pinned"

    names = sorted(peers.names, key=lambda name: (name != own_name, name))
    width = max(len(name) for name in names)
    lines.append(f"{'name'.ljust(width)}  {'key id'.ljust(64)}  source")
    lines += [f"{name.ljust(width)}  {peers.keys[name].key_id}  {source(name)}" for name in names]
    if roster is not None:
        lines += [
            f"note: the roster lists {name!r} with key {listed.key_id[:16]}; the pinned key is used"
            for name, listed in sorted(roster.keys().items())
            if peers.keys[name] != listed
        ]
    return "\n".join(lines)


def _roster_pods(path: Path) -> list[RosterPod]:
    """The pods file's entries as roster entries, sorted by name; a bad one is named."""
    pods: list[RosterPod] = []
    for name, value in sorted(_read_pods(path).items()):
        try:
            pods.append(RosterPod(name=name, public_key=value))
        except ValidationError as exc:
            raise ConfigError(
                f"pods file {path}: entry {name!r}: {first_error(exc, root='entry')} - "
                "copy the pin line `pod-agent keys show` prints on that pod"
            ) from exc
    return pods


def _read_pods(path: Path) -> dict[str, str]:
    """Pod name -> base64 key from a TOML or JSON pods file (by its suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"pods file {path} cannot be read as UTF-8 text ({exc}): check the path") from exc
    try:
        if path.suffix == ".toml":
            table: object = tomllib.loads(text)
        elif path.suffix == ".json":
            table = parse_json(text)
        else:
            raise ConfigError(f"pods file {path} must end in .toml or .json: rename it to say which it is")
    except (tomllib.TOMLDecodeError, ProtocolError) as exc:
        raise ConfigError(f"pods file {path} does not parse ({exc}): fix its syntax") from exc
    if not isinstance(table, dict) or not all(isinstance(value, str) for value in table.values()):
        raise ConfigError(
            f'pods file {path} must map each pod name to its base64 public key: "name" = "key", '
            "one pin line per pod as `pod-agent keys show` prints it"
        )
    return {str(name): str(value) for name, value in table.items()}


def _utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def register(app: typer.Typer) -> None:
    app.add_typer(_peers)
