"""Blob bytes of the hub on disk, addressed by sha256, written as a stream.

Owns the blob directory layout and the streaming write: chunks go to a temporary
file while being hashed (``receive``, stopping at the caller's byte limit), and the
file is renamed into place (``place``) only when the digest and size match what the
uploader declared. Memory use is one chunk, whatever the blob's size (tested at
~64 MB; nothing limits it below ``MAX_BLOB_BYTES``). Metadata (size, owners, what
references it) is recorded in ``Storage``; who may read a blob and when one is
collected is ``server.py``'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

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


class BlobStore:
    """Content-addressed files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise HubError(f"blob id {sha256!r} is not a lowercase hex sha256", status=400)
        return self.root / sha256[:2] / sha256

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
        tmp = final.with_name(f".{sha256}.{os.getpid()}.{id(chunks)}.part")
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

    @staticmethod
    def discard(staged: StagedBlob) -> None:
        staged.tmp.unlink(missing_ok=True)
