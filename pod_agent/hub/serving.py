"""Running the reference hub: open storage, bind (127.0.0.1 by default), TLS, stop on a signal.

Owns ``serve`` (used by ``pod-agent hub serve``), ``open_storage`` (``--db``: an SQLite file, or a
``postgresql://`` URL for several hub processes on one database), ``listening`` (an app on a port for
an ``async with`` block, which ``serve`` and in-process test hubs share) and the server TLS context.
The app is ``server.py``'s (its routes in ``*_routes.py``), storage in ``sqlite.py`` and ``postgres.py``.
Blobs of a file database ``hub.sqlite`` are kept in ``hub.sqlite.blobs/`` beside it; hubs on PostgreSQL
name a directory all of them share (``--blob-dir``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from pod_agent.errors import HubError
from pod_agent.hub.admission import RegistrationPolicy
from pod_agent.hub.cluster import Cluster
from pod_agent.hub.limits import HubLimits
from pod_agent.hub.server import create_app
from pod_agent.hub.sqlite import SqliteStorage
from pod_agent.hub.status import StatusPage
from pod_agent.hub.storage import Storage
from pod_agent.protocol import is_loopback

_log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700
# How long the unread body of a request the hub answered without reading it (a refusal) is read and thrown
# away before the connection closes: aiohttp's default of 10 s let a client that declares a large body and
# stalls hold its connection, and a stopping hub, that long.
REFUSED_BODY_LINGER_S = 1.0
# On SIGTERM, requests in flight get this long to finish before they are cancelled: pods and modellers retry,
# and a service manager expects a prompt stop (aiohttp's default waits up to 60 s).
SHUTDOWN_GRACE_S = 5.0
# Connections the kernel holds for the hub until its loop accepts them (capped by net.core.somaxconn): the pods
# of a process that died reconnect to the survivors within a second, and a connection that finds the queue full
# (aiohttp's default 128) is dropped and retried by the pod's kernel 1 s later, then 3 s.
LISTEN_BACKLOG = 4096
# Net new container objects between the collector's young collections (Python's default is 700). A pod's task socket
# is some hundred objects that live as long as it, so a fleet opening its sockets at once set off a young collection
# every few handshakes and, every ten of those ten, a full one over every open connection: 2,000 handshakes ran ~300
# young, ~30 middle and 2-3 full collections (~60 ms each), a fifth of the hub's CPU for them. Garbage is mostly
# freed by reference counts; only cycles wait longer for a collection.
COLLECT_YOUNG_EVERY = 20_000


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context from a PEM certificate chain and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise HubError(
            f"TLS certificate {cert} / key {key} cannot be loaded: {exc}; give PEM files that match"
        ) from exc
    return context


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def blob_dir_for(db: str) -> Path | None:
    return None if db == ":memory:" or is_postgres_url(db) else Path(db + ".blobs")


def open_storage(db: str) -> tuple[Storage, Cluster | None]:
    """The hub's storage for ``--db`` and, on PostgreSQL, the cluster its processes share (None for SQLite)."""
    if is_postgres_url(db):
        from pod_agent.hub.postgres import PostgresCluster, PostgresStorage

        storage = PostgresStorage(db)
        return storage, PostgresCluster(storage)
    return SqliteStorage(db), None


@asynccontextmanager
async def listening(
    app: web.Application, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, tls: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve ``app`` on host:port for the ``async with`` block; yields the base URL (port 0 resolved)."""
    runner = web.AppRunner(
        app, access_log=None, lingering_time=REFUSED_BODY_LINGER_S, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            raise HubError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from exc
        bound = int(runner.addresses[0][1]) if runner.addresses else port
        yield f"{'https' if tls else 'http'}://{host}:{bound}"
    finally:
        await runner.cleanup()


async def serve(
    *,
    db: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    cert: Path | None = None,
    key: Path | None = None,
    on_listening: Callable[[str], None] | None = None,
    registration: RegistrationPolicy = "open",
    limits: HubLimits | None = None,
    status: StatusPage | None = None,
    blob_dir: Path | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; ``on_listening`` gets the base URL once bound (port 0 resolved).
    Blobs go to ``blob_dir``, by default beside an SQLite file; hubs on PostgreSQL must name one."""
    if (cert is None) != (key is None):
        raise HubError("TLS needs both --cert and --key (or neither for plain http on loopback)")
    tls = server_tls_context(cert, key) if cert is not None and key is not None else None
    storage, cluster = open_storage(db)
    if blob_dir is None and cluster is not None:
        storage.close()
        raise HubError(
            "a hub on PostgreSQL needs --blob-dir: a directory every hub process of the federation shares "
            "(a shared filesystem), since any of them may be asked for any blob"
        )
    try:
        app = create_app(
            storage, blob_dir=blob_dir or blob_dir_for(db), registration=registration, limits=limits,
            cluster=cluster, status=status,
        )
        async with listening(app, host=host, port=port, tls=tls) as url:
            if tls is None and not is_loopback(host):
                _log.warning(
                    "serving plain http on %s: tasks and results cross the network in clear; use --cert/--key", host
                )
            _log.info("hub listening on %s (registration: %s)", url, registration)
            # What start-up made (modules, the app) lives as long as the process: out of the collector's sight,
            # a full collection, which runs while pods wait, traverses only what serving them made.
            gc.freeze()
            gc.set_threshold(COLLECT_YOUNG_EVERY, *gc.get_threshold()[1:])
            if on_listening is not None:
                on_listening(url)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    finally:
        storage.close()
