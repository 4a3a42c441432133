"""Blob bytes of the hub, addressed by sha256, written as a stream.

Owns the ``Blobs`` interface the server uses (receive, place, serve, remove), and its one
implementation on a directory, ``BlobStore``: chunks go to a temporary file while being hashed
(``receive``, stopping at the caller's byte limit), and the file is renamed into place (``place``)
only when the digest and size match what the uploader declared. Memory use is one chunk, whatever
the blob's size (tested at ~64 MB; nothing limits it below ``MAX_BLOB_BYTES``). Hub processes on one
PostgreSQL share one directory (a shared filesystem): temporary names are unique across hosts and the
rename is atomic, so two processes placing the same blob leave one whole file. An object store would
implement ``Blobs`` the same way: a staged upload, published under its sha256 once verified. Metadata
(size, owners, what references it) is recorded in ``Storage``; who may read a blob and when one is
collected is ``blob_routes.py``'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from pod_agent.errors import HubError

# Model weights of a few GB are the largest thing the loop carries; beyond that is a mistake.
MAX_BLOB_BYTES = 8 * 1024**3
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StagedBlob:
    """A received blob whose content matched its sha256, waiting in a temporary file to be placed."""

    sha256: str
    size_bytes: int
    tmp: Path


class Blobs(Protocol):
    """Where the hub keeps blob bytes; every method names a blob by its sha256 (``check_id`` first)."""

    def check_id(self, sha256: str) -> None:
        """HubError (400) unless ``sha256`` is a lowercase hex sha256."""

    def exists(self, sha256: str) -> bool: ...

    async def receive(
        self, sha256: str, chunks: AsyncIterator[bytes], *, declared_size: int | None, max_bytes: int = ...,
        over_limit: str = ...,
    ) -> StagedBlob:
        """Stage an upload, verified against ``sha256`` and ``declared_size``; ``place`` or ``discard`` it."""

    def place(self, staged: StagedBlob) -> None:
        """Publish a staged blob under its sha256 (replacing a copy there, which has the same content)."""

    def discard(self, staged: StagedBlob) -> None: ...

    def remove(self, sha256: str) -> None: ...

    def response(self, sha256: str) -> web.StreamResponse:
        """The blob's bytes as an HTTP response."""


class BlobStore:
    """``Blobs`` as content-addressed files under one directory (local, or shared by several hub processes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        self.check_id(sha256)
        return self.root / sha256[:2] / sha256

    def check_id(self, sha256: str) -> None:
        if not _SHA256.match(sha256):
            raise HubError(f"blob id {sha256!r} is not a lowercase hex sha256", status=400)

    def response(self, sha256: str) -> web.StreamResponse:
        return web.FileResponse(self.path(sha256), headers={"Content-Type": "application/octet-stream"})

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    async def write_stream(self, sha256: str, chunks: AsyncIterator[bytes], *, declared_size: int | None) -> int:
        """Write chunks to the blob ``sha256``; returns the size. Raises HubError(400) on a mismatch."""
        staged = await self.receive(sha256, chunks, declared_size=declared_size)
        self.place(staged)
        return staged.size_bytes

    async def receive(
        self,
        sha256: str,
        chunks: AsyncIterator[bytes],
        *,
        declared_size: int | None,
        max_bytes: int = MAX_BLOB_BYTES,
        over_limit: str = "",
    ) -> StagedBlob:
        """Stream chunks to a temporary file, hashing them; HubError(400) on a mismatch, 413 past ``max_bytes``
        (``over_limit`` then says why the limit is what it is). Call ``place`` or ``discard`` on the result."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Unique across the hosts sharing the directory (a pid and an address are not).
        tmp = final.with_name(f".{sha256}.{uuid.uuid4().hex}.part")
        limit = min(max_bytes, MAX_BLOB_BYTES)
        why = over_limit or f"blobs are capped at {MAX_BLOB_BYTES} bytes; split or shrink it"
        if declared_size is not None and declared_size > limit:
            raise HubError(f"blob {sha256[:12]}... of {declared_size} bytes is over {limit}: {why}", status=413)
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(open, tmp, "wb")
        kept = False
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise HubError(f"blob {sha256[:12]}... is over {limit} bytes: {why}", status=413)
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(handle.close)
            if declared_size is not None and size != declared_size:
                raise HubError(f"blob {sha256[:12]}...: received {size} bytes, declared {declared_size}", status=400)
            if digest.hexdigest() != sha256:
                raise HubError(
                    f"blob {sha256[:12]}...: content hashes to {digest.hexdigest()[:12]}...; upload the right file",
                    status=400,
                )
            kept = True
            return StagedBlob(sha256=sha256, size_bytes=size, tmp=tmp)
        finally:
            if not handle.closed:
                handle.close()
            if not kept:
                tmp.unlink(missing_ok=True)

    def place(self, staged: StagedBlob) -> None:
        """Rename a received blob into place (same content as any file already there)."""
        os.replace(staged.tmp, self.path(staged.sha256))

    def discard(self, staged: StagedBlob) -> None:
        staged.tmp.unlink(missing_ok=True)
