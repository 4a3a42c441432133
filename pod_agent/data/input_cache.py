"""Prepared task inputs kept between tasks: a federated loop sends the same selection every round.

Owns the cache directory (0700, under the pod's state dir) and its entries. An entry is the
``data.arrow`` that ``task_input.prepare_task_input`` writes plus its datastructure and the
file's sha256, keyed by everything the file depends on: the file layout's version, the schema hash,
the selection (target, columns, encoding, scaling, split and its seed), the owner's ``share_categories``,
the datasource section (how the files are read) and the data files' identity (path, inode, size
and mtime of each), so that a changed data file makes a new key and its old entries are never
read again. A task gets its entry by hard link into its own input dir (a copy across filesystems).

The linked file is the task's input: the sandbox reads it, and at a weak sandbox level a worker
running as the agent's uid could write it. So an entry is reused only while its bytes still
hash to what was written; otherwise it is dropped and prepared again (a warning says so). Where the
caller says no worker can write an entry (``workers_can_write`` False: they run under a uid of their
own, and the entry is the agent's, mode 0400), its bytes are hashed on its first use by this process
only (a run at a weaker level may have left it changed), not on every task: hashing costs a few ms per
MB before the task's first step (the demo's largest pod: 1.5 MB in the compact tabular layout). Entries
beyond ``max_bytes`` are evicted least recently used first; an entry is written to a temporary
dir and renamed into place, so a crash leaves no half entry under a key.

A missing entry is prepared from the pod's column store where the cache has one (``column_store.py``:
the table's columns encoded once, so a new selection is not a read of the table). The store is read by
the agent only, never linked into a task, so what a worker could write is still only an entry's file,
and the file prepared from the store is the one the datasource would give, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from pod_agent.data.column_store import ColumnStore
from pod_agent.data.datasource import Datasource, FileIdentity
from pod_agent.data.schema import Schema
from pod_agent.data.task_input import DATA_FILE_NAME, FILE_LAYOUT_VERSION, TaskInput, prepare_task_input
from pod_agent.errors import DataError
from pod_agent.protocol import DataSelection, canonical_json

_log = logging.getLogger(__name__)

_DATASTRUCTURE_FILE = "datastructure.json"
_SHA256_FILE = "data.sha256"
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class _Entry:
    path: Path
    datastructure: dict[str, object]


class TaskInputCache:
    """Prepared inputs under ``root`` (created 0700), at most ``max_bytes`` of them on disk; a missing one is
    prepared from ``columns``, the pod's column store, where one is given (see ``prepare_task_input``)."""

    def __init__(self, root: Path, *, max_bytes: int, columns: ColumnStore | None = None) -> None:
        if max_bytes < 0:
            raise DataError(f"task input cache size {max_bytes} bytes must not be negative; 0 turns it off")
        self.root, self.max_bytes, self.columns = root, max_bytes, columns
        # Tasks prepare in worker threads: one at a time here, so that no entry is replaced or evicted
        # between its lookup and its link.
        self._lock = threading.Lock()
        self._hashed: set[str] = set()  # keys whose entry's bytes this process hashed and found as written

    def prepare(
        self, ds: Datasource, schema: Schema, selection: DataSelection, out_dir: Path, *, share_categories: bool,
        workers_can_write: bool = True,
    ) -> TaskInput:
        """``out_dir/data.arrow`` for ``selection``, linked from the cache or prepared (and kept) now;
        a cached entry's bytes are hashed each time while ``workers_can_write``, else once per process."""
        if self.max_bytes == 0:
            return prepare_task_input(
                ds, schema, selection, out_dir, share_categories=share_categories, columns=self.columns
            )
        with self._lock:
            self._make_root()
            files = ds.identity()  # one walk of the data files for the key here and the column store's
            key = cache_key(ds, schema, selection, share_categories=share_categories, files=files)
            entry = self._entry(key, rehash=workers_can_write or key not in self._hashed)
            if entry is None:
                entry = self._store(key, ds, schema, selection, share_categories=share_categories, files=files)
            self._hashed.add(key)
            out_dir.mkdir(parents=True, exist_ok=True)
            dest = out_dir / DATA_FILE_NAME
            try:
                os.link(entry.path, dest)
            except OSError:
                shutil.copyfile(entry.path, dest)  # another filesystem (or no hard links there)
        return TaskInput(path=dest, datastructure=entry.datastructure)

    def _make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # it holds encoded rows of the table: the agent's alone

    def _entry(self, key: str, *, rehash: bool) -> _Entry | None:
        """The entry under ``key`` if its bytes are still those written (``rehash``: hashed now; else as
        this process last hashed them), its last use noted; else None."""
        folder = self.root / key
        try:
            expected = (folder / _SHA256_FILE).read_text().strip()
            datastructure = json.loads((folder / _DATASTRUCTURE_FILE).read_text())
            actual = _file_sha256(folder / DATA_FILE_NAME) if rehash else expected
        except (OSError, ValueError):
            self._hashed.discard(key)
            return None
        if actual != expected:
            _log.warning("cached task input %s changed since it was written; preparing it again", key[:16])
            shutil.rmtree(folder, ignore_errors=True)
            return None
        os.utime(folder)  # the directory's mtime is the entry's last use, for eviction
        return _Entry(folder / DATA_FILE_NAME, datastructure)

    def _store(
        self, key: str, ds: Datasource, schema: Schema, selection: DataSelection, *, share_categories: bool,
        files: FileIdentity,
    ) -> _Entry:
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
        try:
            prepared = prepare_task_input(
                ds, schema, selection, staging, share_categories=share_categories, columns=self.columns, files=files
            )
            prepared.path.chmod(0o400)  # nobody writes an entry once it exists, the agent included
            (staging / _SHA256_FILE).write_text(_file_sha256(prepared.path))
            (staging / _DATASTRUCTURE_FILE).write_text(json.dumps(prepared.datastructure, sort_keys=True))
            folder = self.root / key
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._evict(keep=key)
        return _Entry(folder / DATA_FILE_NAME, prepared.datastructure)

    def _evict(self, *, keep: str) -> None:
        """Remove the least recently used entries (never ``keep``) until the cache fits ``max_bytes``."""
        entries = []
        for folder in self.root.iterdir():
            if folder.name.startswith(".new-") or not folder.is_dir():
                continue
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append((folder.stat().st_mtime_ns, folder, size))
        total = sum(size for _, _, size in entries)
        for _, folder, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)
                total -= size


def cache_key(
    ds: Datasource, schema: Schema, selection: DataSelection, *, share_categories: bool, files: FileIdentity
) -> str:
    """sha256 of everything a prepared input depends on, the data files' identity (``files``) included."""
    described = {
        "datasource": ds.section.model_dump(mode="json"),  # how the files are read: parse options, stypes
        "schema": schema.hash(),
        "selection": selection.model_dump(mode="json"),
        "share_categories": share_categories,
        "files": files,
        "layout": FILE_LAYOUT_VERSION,  # an entry written by an older agent in another layout is never served
    }
    return hashlib.sha256(canonical_json(described)).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
