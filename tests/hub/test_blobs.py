"""Blobs stream through the hub to disk and back with sha256 checks, without being held in memory."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from pod_agent.errors import ModellerError
from pod_agent.modeller import ModellerClient
from pod_agent.protocol import IdentityKey, sign_request

BLOB_MB = 64


@pytest.fixture
async def modeller(hub: Any) -> ModellerClient:
    key = IdentityKey.generate()
    client = ModellerClient(hub.base, key)
    await client.register("m")
    return client


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


async def test_large_blob_streams_to_disk_and_back_with_bounded_memory(
    hub: Any, modeller: ModellerClient, tmp_path: Path
) -> None:
    source = tmp_path / "weights.safetensors"
    sha = _write_random(source, BLOB_MB << 20)
    tracemalloc.start()
    try:
        ref = await modeller.upload_blob(source)
        _, peak_upload = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        back = await modeller.download_blob(sha, tmp_path / "back.safetensors")
        _, peak_download = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await modeller.close()
    assert ref.sha256 == sha and ref.size_bytes == BLOB_MB << 20
    stored = hub.blob_dir / sha[:2] / sha
    assert stored.stat().st_size == BLOB_MB << 20
    assert hashlib.sha256(back.read_bytes()).hexdigest() == sha
    # Client and hub share this process: neither may hold the blob whole.
    assert peak_upload < 16 << 20, peak_upload
    assert peak_download < 16 << 20, peak_download


async def test_blob_whose_content_does_not_match_its_sha256_is_refused(hub: Any, modeller: ModellerClient) -> None:
    wrong = "0" * 64
    path = f"/v1/blobs/{wrong}"
    headers = sign_request(modeller.key, "PUT", path, b"", now=int(time.time()))
    async with hub.session.put(hub.base + path, data=b"not the content", headers=headers) as resp:
        assert resp.status == 400
        assert "hashes to" in (await resp.json())["error"]
    assert [p for p in hub.blob_dir.rglob("*") if p.is_file()] == []
    await modeller.close()


async def test_missing_blob_download_is_a_clear_error(hub: Any, modeller: ModellerClient, tmp_path: Path) -> None:
    with pytest.raises(ModellerError, match="404 for blob"):
        await modeller.download_blob("1" * 64, tmp_path / "x")
    await modeller.close()
