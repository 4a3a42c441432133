"""The reference hub as an aiohttp application: ``create_app(storage)``.

Owns the application's assembly: the authentication middleware (``auth.py``) in front of every route, the route
tables of ``registration_routes``, ``pod_routes``, ``modeller_routes``, ``round_routes`` and ``blob_routes``, the
per-app state they share (``hubstate.HubState``), and the background work while it serves (blob collection, the
other hub processes' wake-ups). The hub is not trusted by pods: it checks signatures to keep its own records
clean, but the pod's policy decides.

Routes (JSON bodies; errors are ``{"error": text}`` with a 4xx/5xx status):

    GET  /healthz                           liveness, no auth
    POST /v1/pods/register                  pod registers or updates itself
    POST /v1/pod/heartbeat                  pod is alive (long-poll mode)
    GET  /v1/pod/ws                         WebSocket: tasks pushed, acks and heartbeats back
    GET  /v1/pod/ws?standby=1               a pod's standby WebSocket: heartbeats only until it sends
                                            "promote" (its socket at another process ended), then as above
    GET  /v1/pod/tasks?wait=S               long poll: pending tasks
    POST /v1/pod/tasks/{task_id}/ack        pod has recorded the task
    POST /v1/pod/tasks/{task_id}/refusal    pod refused: {"code": ...}
    POST /v1/pod/tasks/{task_id}/progress   a ProgressEvent
    POST /v1/pod/results                    a pod-signed ResultPayload envelope (idempotent)
    POST /v1/modellers/register             modeller registers its key
    GET  /v1/pods                           pods with public schema and status
    POST /v1/models                         publish a model version
    GET  /v1/models/{name}/{version}        fetch a model version (publisher, targeted pods, or public)
    POST /v1/tasks                          submit a modeller-signed TaskPayload envelope and its cohort
                                            entries (each pod is pushed its own entry and proof: fanout.py)
    GET  /v1/tasks/{task_id}                per-pod delivery, refusal, progress and result status
    GET  /v1/tasks/{task_id}/results        the pods' signed result envelopes
    GET  /v1/tasks/{task_id}/wait?after=N&wait=S  long poll: the status once more than N pods finished
    PUT  /v1/blobs/{sha256}                 stream a blob (signature over an empty body; sha256 binds it)
    GET  /v1/blobs/{sha256}                 stream a blob back (to those it is shared with, else 404)
    POST /v1/secagg/{task_id}/{round}/{stage}    one signed secure-round message (protocol.secure_round)
    GET  /v1/secagg/{task_id}/{round}/{stage}?wait=S&after=N
                                            long poll: the stage's messages once more than N are held
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from pod_agent.hub import blob_routes, modeller_routes, pod_routes, registration_routes, round_routes
from pod_agent.hub.admission import RegistrationPolicy
from pod_agent.hub.auth import errors_and_auth
from pod_agent.hub.blob_routes import collect_blobs
from pod_agent.hub.blobs import BlobStore
from pod_agent.hub.cluster import Cluster, SingleProcess
from pod_agent.hub.hubstate import HUB, HubState
from pod_agent.hub.limits import HubLimits
from pod_agent.hub.status import StatusPage, StatusSource, add_status_route
from pod_agent.hub.storage import Storage

_log = logging.getLogger(__name__)

# Bodies are read by ``auth`` with each route's cap (limits.body_cap), never by aiohttp's request.read(); this
# only bounds a handler that would call it by mistake.
MAX_JSON_BODY_BYTES = 8 * 1024 * 1024


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _listen_to_cluster(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the other hub processes' wake-ups wake this one's waiters."""
    hub = app[HUB]
    task = asyncio.create_task(
        hub.cluster.run(hub.on_cluster_key, hub.wake_all_local), name="hub-cluster"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await hub.cluster.close()


async def _collect_periodically(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: blob collection runs every gc_interval_s while the app serves."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(app[HUB].limits.gc_interval_s)
            try:
                await collect_blobs(app)
            except Exception as exc:  # noqa: BLE001 - last-resort guard: any storage backend's error
                # A failed pass (disk, database busy) is retried on the next; serving goes on regardless.
                _log.warning(
                    "blob collection failed: %s; retrying in %g s", exc, app[HUB].limits.gc_interval_s, exc_info=True
                )

    task = asyncio.create_task(loop(), name="hub-blob-collection")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    storage: Storage,
    *,
    blob_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
    registration: RegistrationPolicy = "open",
    limits: HubLimits | None = None,
    status: StatusPage | None = None,
    cluster: Cluster | None = None,
) -> web.Application:
    """The hub as an aiohttp application; blobs go to ``blob_dir`` (a temporary dir if None). ``cluster``
    joins it to other hub processes on the same database (alone when None)."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_JSON_BODY_BYTES)
    owned_tmp = blob_dir is None
    root = blob_dir if blob_dir is not None else Path(tempfile.mkdtemp(prefix="pod-hub-blobs-"))
    app[HUB] = HubState(
        storage, BlobStore(root), clock, registration=registration, limits=limits or HubLimits(),
        cluster=cluster or SingleProcess(),
    )
    app.cleanup_ctx.append(_collect_periodically)
    app.cleanup_ctx.append(_listen_to_cluster)

    async def _close_sockets(app: web.Application) -> None:
        for ws in list(app[HUB].sockets):
            await ws.close(code=1001, message=b"hub shutting down")

    async def _cleanup(app: web.Application) -> None:
        app[HUB].fanout.settle(collect=False)  # a stopped hub holds the collector off no longer
        if owned_tmp:
            shutil.rmtree(root, ignore_errors=True)

    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_cleanup)
    app.router.add_get("/healthz", _healthz, name="healthz")
    for module in (registration_routes, pod_routes, modeller_routes, blob_routes, round_routes):
        app.add_routes(module.routes)
    if status is not None:
        # The operator's read-only page (hub.status), behind the admin token rather than a request signature.
        hub = app[HUB]
        add_status_route(app, status, StatusSource(
            storage=storage, now=hub.now, online=hub.online, registration=registration,
        ))
    return app
