"""Blob bytes of the hub on disk, addressed by sha256, written as a stream.

Owns the blob directory layout and the streaming write: chunks go to a temporary
file while being hashed, and the file is renamed into place only when the
digest and size match what the uploader declared. Memory use is one chunk,
whatever the blob's size (tested at ~64 MB; nothing limits it below
``MAX_BLOB_BYTES``). Metadata (size, time) is recorded in ``Storage``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from pod_agent.errors import HubError

# Model weights of a few GB are the largest thing the loop carries; beyond that is a mistake.
MAX_BLOB_BYTES = 8 * 1024**3
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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

    async def write_stream(self, sha256: str, chunks: AsyncIterator[bytes], *, declared_size: int | None) -> int:
        """Write chunks to the blob ``sha256``; returns the size. Raises HubError(400) on a mismatch."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{sha256}.{os.getpid()}.{id(chunks)}.part")
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(open, tmp, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_BLOB_BYTES:
                    raise HubError(f"blob larger than {MAX_BLOB_BYTES} bytes; split or shrink it", status=413)
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
            os.replace(tmp, final)
        finally:
            if not handle.closed:
                handle.close()
            tmp.unlink(missing_ok=True)
        return size
