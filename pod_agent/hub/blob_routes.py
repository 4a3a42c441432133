"""Blob routes of the hub: stream a blob in within the uploader's quota, stream it back to those it is shared
with, and collect the blobs nothing references.

Blobs record who uploaded them and what references them (a task's weights, a pod's result or masked input, a
model). A blob is served to its uploaders, to the modeller of a task whose result or masked input names it (sent
by a pod that uploaded it), and to the pods targeted by a task that pins it as weights and whose modeller
uploaded it; each key's uploads are held to a byte and count quota (``limits.HubLimits``), and blobs nothing
references are collected after a grace period (``collect_blobs``, run by the app's background task). The bytes
stream to disk through ``blobs.Blobs``; their records are storage's.
"""

from __future__ import annotations

import logging

from aiohttp import web

from pod_agent.errors import HubError
from pod_agent.hub.auth import SIGNER, SIGNER_POD
from pod_agent.hub.hubstate import HUB, HubState, hub_of
from pod_agent.hub.limits import TooLarge
from pod_agent.hub.storage import BlobRecord

_log = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.put("/v1/blobs/{sha256}", name="blob_put")
async def _blob_put(request: web.Request) -> web.Response:
    """Stream a blob in, within the uploader's quota; the uploader becomes one of its owners.

    An owner sending it again is answered at once (nothing read); another key must send the
    whole content, so knowing a sha256 never makes anyone an owner.
    """
    hub = hub_of(request)
    signer = request[SIGNER]
    sha256 = request.match_info["sha256"]
    hub.blobs.check_id(sha256)  # 400 for a malformed id before anything else
    # Uploaded again: the grace period before collection starts over. Refreshed first and the bytes looked for
    # after, so a collection that decided meanwhile (in any process) has removed them by then.
    if await hub.db(hub.storage.refresh_blob, sha256, owner=signer, now=hub.now()) and hub.blobs.exists(sha256):
        return web.json_response({"sha256": sha256, "outcome": "duplicate"})
    usage = await hub.db(hub.storage.blob_usage, signer)
    limits = hub.limits
    if usage.count >= limits.blob_quota_count:
        raise TooLarge(
            f"key {signer[:16]} holds {usage.count} blobs, the hub's quota (--blob-quota-count "
            f"{limits.blob_quota_count}); unreferenced ones are collected after {limits.blob_grace_s} s"
        )
    staged = await hub.blobs.receive(
        sha256, request.content.iter_chunked(1024 * 1024), declared_size=request.content_length,
        max_bytes=limits.blob_quota_bytes - usage.size_bytes,
        over_limit=(
            f"key {signer[:16]} holds {usage.size_bytes} of its {limits.blob_quota_bytes} bytes of blob quota "
            f"(--blob-quota-bytes); unreferenced blobs are collected after {limits.blob_grace_s} s"
        ),
    )
    try:
        # Recorded before its bytes are placed: a collection of the same blob in another process has then
        # either decided before (and removed the bytes it forgot) or finds this upload too recent to collect.
        await hub.db(hub.storage.put_blob, BlobRecord(sha256, staged.size_bytes, hub.now()), owner=signer)
        hub.blobs.place(staged)
    finally:
        hub.blobs.discard(staged)
    _log.info("blob stored (%d bytes) at %s", staged.size_bytes, sha256[:12])
    return web.json_response({"sha256": sha256, "size_bytes": staged.size_bytes, "outcome": "stored"}, status=201)


async def require_uploaded(hub: HubState, sha256: str, key_id: str, *, size_bytes: int | None, what: str) -> None:
    """HubError 424 unless ``key_id`` uploaded the blob (``size_bytes`` long, where given). A record names only its
    sender's own uploads: naming another key's blob would neither open it to anyone nor, by referencing it, keep
    it from collection."""
    blob = await hub.db(hub.storage.get_blob, sha256)
    if (
        blob is None or (size_bytes is not None and blob.size_bytes != size_bytes)
        or not await hub.db(hub.storage.blob_owned_by, sha256, key_id)
    ):
        raise HubError(f"{what} blob {sha256[:12]}... not uploaded by this key yet; PUT it first", status=424)


@routes.get("/v1/blobs/{sha256}", name="blob_get")
async def _blob_get(request: web.Request) -> web.StreamResponse:
    hub = hub_of(request)
    sha256 = request.match_info["sha256"]
    pod = request[SIGNER_POD]
    readable = hub.blobs.exists(sha256) and await hub.db(
        hub.storage.may_read_blob, sha256, key_id=request[SIGNER], pod=None if pod is None else pod.name
    )
    if not readable:
        # One answer for absent and not shared: a sha256 alone tells a stranger nothing.
        raise HubError(
            f"no blob {sha256[:12]}... readable by this key: a blob is served to its uploader, to the modeller "
            "of a task whose result names it, and to the pods a task of its uploader pins it for",
            status=404,
        )
    return hub.blobs.response(sha256)


async def collect_blobs(app: web.Application) -> int:
    """Delete blobs nothing references whose last upload is older than the grace period; returns how many."""
    hub = app[HUB]
    cutoff = hub.now() - hub.limits.blob_grace_s
    removed = 0
    for sha256 in await hub.db(hub.storage.unreferenced_blobs, uploaded_before=cutoff):
        if await hub.db(
            hub.storage.delete_blob_if_unreferenced, sha256, uploaded_before=cutoff, remove=hub.blobs.remove
        ):
            removed += 1
    if removed:
        _log.info("collected %d unreferenced blobs", removed)
    return removed
