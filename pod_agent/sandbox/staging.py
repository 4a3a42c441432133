"""Worker slots on the host: what goes into a worker's bound directories and what comes out.

Owns the scratch root (``<scratch>/runner-*``, root-owned, 0711), one slot per worker
(``slot-*`` with ``input``, root:sandbox-group 0750, and ``work``), putting a job's input into
a slot (hard links, copies across filesystems) readable by the sandbox group only, handing
scratch files back to the job (renames only, and only where scratch is a host directory), and
keeping a worker's stderr text for the operator (0600, a bounded number of files). bwrap
resolves bind sources by path as the sandbox uid, so the job's own directories, typically
under a 0700 state dir, cannot be bound directly. Launching and killing is process.py's.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from pod_agent.errors import SandboxError
from pod_agent.sandbox.launch import Identity

log = logging.getLogger("pod_agent.sandbox")

# Kept stderr files are for debugging recent tasks; older ones go so the state dir cannot fill up.
KEPT_STDERR_FILES = 100


def prepare_scratch(root: Path, identity: Identity | None) -> Path:
    """A fresh per-runner directory of worker slots under ``root``: root-owned, 0711, reachable by the
    sandbox uid (several pods on one host share ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)
    if identity is not None and identity.dedicated:
        for parent in root.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise SandboxError("scratch_unreachable",
                                   f"sandbox scratch {root} lies under {parent}, which uid {identity.uid} cannot "
                                   "traverse: choose a scratch root outside any 0700 directory")
    mine = Path(tempfile.mkdtemp(prefix="runner-", dir=root))
    os.chmod(mine, 0o711)
    return mine


def new_slot(scratch: Path, identity: Identity | None) -> Path:
    """A fresh worker slot: ``input`` (read-only to the worker) and ``work`` (its scratch)."""
    slot = Path(tempfile.mkdtemp(prefix="slot-", dir=scratch))
    os.chmod(slot, 0o711)
    (slot / "input").mkdir(mode=0o750)
    (slot / "work").mkdir(mode=0o700)
    if identity is not None and identity.dedicated:
        os.chown(slot / "input", 0, identity.gid)
        os.chown(slot / "work", identity.uid, identity.gid)
    return slot


def check_input(src: Path) -> None:
    """Refuse a job whose input dir is missing before any worker is spent on it."""
    if not src.is_dir():
        raise SandboxError("input_unreadable", f"staging {src} for the worker: no such directory")


def stage_input(src: Path, slot: Path, identity: Identity | None) -> None:
    """Put the job's input into the slot's ``input`` dir, readable by the sandbox group only."""
    check_input(src)
    try:
        _link_tree(src, slot / "input")
        _grant_input(slot / "input", identity)
    except OSError as exc:
        raise SandboxError("input_unreadable", f"staging {src} for the worker: {exc}") from exc


def _grant_input(input_dir: Path, identity: Identity | None) -> None:
    """Let the sandbox uid's group read the input tree, and nobody else: it holds the pod's prepared rows.

    Nobody gains write access; other local users lose read access (the tree is hard-linked to the
    task's input under the state dir, which gets the same modes). A worker that runs as the agent's
    own uid needs no group bits either.
    """
    dedicated = identity is not None and identity.dedicated
    for root, dirs, files in os.walk(input_dir):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            if os.path.islink(name):
                continue
            st = os.lstat(name)
            if identity is not None and dedicated:
                os.chown(name, -1, identity.gid)
                extra = 0o050 if os.path.isdir(name) else 0o040
                os.chmod(name, (st.st_mode | extra) & ~0o027 & 0o7777)
            else:
                os.chmod(name, st.st_mode & ~0o077 & 0o7777)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links, copies across filesystems."""
    def _link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    # symlinks=True: a link in the input is copied as a link (dangling inside), never followed on the host.
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True)


def move_back(work: Path, dest: Path) -> None:
    """Hand the worker's scratch files to the job's work_dir (renames only; never a cross-fs copy).

    Only without namespaces is scratch a host directory; with them it is a tmpfs that dies
    with the worker and nothing comes back.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(work):
        try:
            os.rename(entry.path, dest / entry.name)
        except OSError as exc:
            log.info("sandbox scratch %s not moved to %s: %s", entry.name, dest, exc)


def keep_stderr(kept: bytes, total: int, path: Path | None) -> None:
    """Log how much the worker wrote to stderr (``total`` bytes); its text (``kept``) only ever goes to ``path``."""
    if not total:
        return
    if path is None:
        log.info("sandbox worker wrote %d bytes to stderr (not kept: set security.keep_sandbox_stderr = true "
                 "to keep it under the state dir)", total)
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(kept)
    except OSError as exc:
        log.warning("sandbox worker stderr (%d bytes) not kept: %s", total, exc)
        return
    log.info("sandbox worker wrote %d bytes to stderr; first %d kept in %s", total, len(kept), path)
    old_first = sorted(path.parent.glob("*.log"), key=lambda p: p.stat().st_mtime_ns)
    for old in old_first[:-KEPT_STDERR_FILES]:
        old.unlink(missing_ok=True)


__all__ = ["KEPT_STDERR_FILES", "check_input", "keep_stderr", "move_back", "new_slot", "prepare_scratch", "stage_input"]
