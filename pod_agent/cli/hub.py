"""``pod-agent hub``: serve the reference hub (pod_agent.hub), bound to 127.0.0.1 by default, and
administer it through its database file: ``release-pod`` frees a pod name held by an old key,
``invite`` makes a one-time enrolment token, ``pending`` lists keys awaiting approval and
``approve`` admits one. The admin commands need no network API: they open the hub's SQLite
file or PostgreSQL database (the hub may keep running; the database serialises the writes)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer

from pod_agent.errors import HubError
from pod_agent.hub import (
    DEFAULT_BLOB_GRACE_S,
    DEFAULT_BLOB_QUOTA_BYTES,
    DEFAULT_BLOB_QUOTA_COUNT,
    DEFAULT_GC_INTERVAL_S,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_S,
    DEFAULT_TOKEN_TTL_S,
    REGISTRATION_POLICIES,
    HubLimits,
    RegistrationPolicy,
    StatusPage,
    Storage,
    is_postgres_url,
    open_storage,
)
from pod_agent.ops import configure_logging

_hub = typer.Typer(name="hub", help="Run and administer the reference hub.", no_args_is_help=True)

_DB_HELP = "The hub's SQLite file or postgresql:// URL (the hub may keep running)."


@_hub.command("serve")
def serve(
    db: str = typer.Option(
        "hub.sqlite", "--db",
        help="SQLite file (blobs go to <db>.blobs/), :memory:, or a postgresql:// URL several hub processes share.",
    ),
    blob_dir: Path | None = typer.Option(
        None, "--blob-dir", help="Blob directory (default <db>.blobs/); with PostgreSQL, one all hub processes share."
    ),
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to bind; 127.0.0.1 unless you mean it."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port (0 picks a free one and prints it)."),
    cert: Path | None = typer.Option(None, "--cert", help="PEM certificate chain: serve HTTPS."),
    key: Path | None = typer.Option(None, "--key", help="PEM private key of --cert."),
    log_format: str = typer.Option("text", "--log-format", help="text or json."),
    registration: str = typer.Option(
        "open", "--registration",
        help="Who may register: open (any key; the demo), token (needs `hub invite`), approve (needs `hub approve`).",
    ),
    rate_per_s: float = typer.Option(DEFAULT_RATE_PER_S, "--rate-per-s", help="Requests per second per key."),
    rate_burst: int = typer.Option(DEFAULT_RATE_BURST, "--rate-burst", help="Requests one key may send at once."),
    blob_quota_bytes: int = typer.Option(DEFAULT_BLOB_QUOTA_BYTES, "--blob-quota-bytes", help="Blob bytes per key."),
    blob_quota_count: int = typer.Option(DEFAULT_BLOB_QUOTA_COUNT, "--blob-quota-count", help="Blobs per key."),
    blob_grace_s: int = typer.Option(
        DEFAULT_BLOB_GRACE_S, "--blob-grace-s", help="Seconds an unreferenced blob is kept before collection."
    ),
    gc_interval_s: float = typer.Option(DEFAULT_GC_INTERVAL_S, "--gc-interval-s", help="Seconds between collections."),
    admin_token_file: Path | None = typer.Option(
        None, "--admin-token-file",
        help="A file holding the operator's admin token: serves the read-only status page at /status.",
    ),
    pod_keys: Path | None = typer.Option(
        None, "--pod-keys", help="The operator's pod-keys file (`pod-agent keys show` lines): /status marks each key.",
    ),
) -> None:
    """Serve the hub until SIGTERM/SIGINT; prints `hub listening on URL` once bound."""
    configure_logging(fmt=log_format, level="INFO")  # type: ignore[arg-type]
    from pod_agent.hub import serve as run_hub

    policy = _policy(registration)
    limits = HubLimits(
        rate_per_s=rate_per_s, rate_burst=rate_burst, blob_quota_bytes=blob_quota_bytes,
        blob_quota_count=blob_quota_count, blob_grace_s=blob_grace_s, gc_interval_s=gc_interval_s,
    )

    status = _status_page(admin_token_file, pod_keys)

    def announce(url: str) -> None:
        typer.echo(f"hub listening on {url}")
        if status is not None:
            typer.echo(f"status page at {url}/status (the admin token is its password)")

    asyncio.run(
        run_hub(
            db=db, host=host, port=port, cert=cert, key=key, on_listening=announce, registration=policy,
            limits=limits, blob_dir=blob_dir, status=status,
        )
    )


def _status_page(token_file: Path | None, pod_keys: Path | None) -> StatusPage | None:
    """The status page's settings from the operator's files; None (no page) without a token file."""
    if token_file is None:
        if pod_keys is not None:
            raise HubError("--pod-keys marks keys on the status page: give --admin-token-file too")
        return None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise HubError(f"admin token file {token_file} cannot be read: {exc}; give a UTF-8 file") from exc
    pins: dict[str, str] = {}
    if pod_keys is not None:
        from pod_agent.modeller import load_pod_keys

        pins = {name: key.to_b64() for name, key in load_pod_keys(pod_keys).items()}
    return StatusPage(admin_token=token, pod_pins=pins)


def _policy(value: str) -> RegistrationPolicy:
    if value not in REGISTRATION_POLICIES:
        raise HubError(f"--registration {value!r} is not one of {', '.join(REGISTRATION_POLICIES)}")
    return value  # type: ignore[return-value]


def _open_db(db: str) -> Storage:
    if not is_postgres_url(db) and (db == ":memory:" or not Path(db).is_file()):
        raise HubError(f"no hub database at {db}; give the --db the hub serves")
    storage, _ = open_storage(db)
    return storage


@_hub.command("release-pod")
def release_pod(
    name: str = typer.Argument(..., help="The pod name to free."),
    db: str = typer.Option("hub.sqlite", "--db", help=_DB_HELP),
) -> None:
    """Forget a pod's registration so it can register again with a new key (after re-keying).

    A pod name belongs to the first key that registers it; nothing over the network can move it.
    Its stored tasks and results stay.
    """
    storage = _open_db(db)
    try:
        if not storage.release_pod(name):
            raise HubError(f"no pod named {name!r} in {db}; `pod-agent modeller pods` lists them")
    finally:
        storage.close()
    typer.echo(f"released pod name {name!r}: the next key to register it takes it")


@_hub.command("invite")
def invite(
    db: str = typer.Option("hub.sqlite", "--db", help=_DB_HELP),
    expires_in: int = typer.Option(DEFAULT_TOKEN_TTL_S, "--expires-in", help="Seconds the token stays valid."),
    note: str = typer.Option("", "--note", help="Who the token is for (kept in the hub's database)."),
) -> None:
    """Make a one-time enrolment token for a hub serving `--registration token`; prints it once.

    Give it to the pod's owner (hub.enrolment_token in pod.toml) or the modeller
    (`pod-agent modeller register --enrolment-token`). It admits one new key; only its hash is stored.
    """
    from pod_agent.hub import invite as make_token

    storage = _open_db(db)
    try:
        token = make_token(storage, now=int(time.time()), ttl_s=expires_in, note=note)
    finally:
        storage.close()
    typer.echo(token)


@_hub.command("pending")
def pending(db: str = typer.Option("hub.sqlite", "--db", help=_DB_HELP)) -> None:
    """List keys that registered with a hub serving `--registration approve` and await approval."""
    storage = _open_db(db)
    try:
        keys = storage.pending_keys()
    finally:
        storage.close()
    if not keys:
        typer.echo("no keys await approval")
    for key in keys:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.requested_at))
        typer.echo(f"{key.key_id}  {key.role:<8} {key.name}  (registered {when})")


@_hub.command("approve")
def approve(
    key_id: str = typer.Argument(..., help="The key id `pod-agent hub pending` lists."),
    db: str = typer.Option("hub.sqlite", "--db", help=_DB_HELP),
) -> None:
    """Admit a pending key: its pod or modeller is served from its next request."""
    storage = _open_db(db)
    try:
        if not storage.approve_key(key_id, now=int(time.time())):
            raise HubError(
                f"key {key_id!r} is not awaiting approval in {db}; `pod-agent hub pending` lists those that are"
            )
    finally:
        storage.close()
    typer.echo(f"approved {key_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(_hub)
