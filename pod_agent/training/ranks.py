"""Data-parallel ranks inside the sandbox: fork them, meet in scratch, tell Lightning they exist.

Owns running one block of training on ``world_size`` processes (:func:`data_parallel`). The
worker is rank 0 and forks ranks 1..N-1. Fork, not spawn and not Lightning's re-run of
``sys.argv``: the modeller's classes exist only in this process (they are never pickled), the
sandbox's command line is the bootstrap's, and a forked rank inherits every confinement
(seccomp, rlimits, Landlock, namespaces, cgroup) and stays in the tree the agent kills.

The ranks meet over a ``torch.distributed.FileStore`` in the task's scratch (no port, no
address: nothing outside the sandbox takes part). gloo then carries CPU gradients and NCCL GPU
ones, over TCP on the loopback of the worker's own network namespace: the agent's seccomp rule
allows AF_INET only where it verified that namespace (``sandbox.confine``/``sandbox.process``).
Lightning learns of the ranks through :class:`ForkedRanks`, a cluster environment whose
processes exist already, so its DDP strategy starts none of its own and finds the process group
initialised. Forking before anything touches CUDA is the caller's part (engine.py forks before
its first Trainer).

A forked rank runs the block and leaves with ``os._exit``: it never returns into the caller,
never sends a frame (progress is rank 0's) and never flushes buffers it inherited. Rank 0 waits
for the others after the block and kills them if the block failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from lightning_fabric.plugins import ClusterEnvironment

from pod_agent.errors import TrainingError

# How long a rank waits for the others in a collective (rendezvous included) before it gives up;
# a rank that dies closes its sockets, so the others fail at once and do not wait this long.
COLLECTIVE_TIMEOUT_S = 120.0
# After rank 0's block, how long the other ranks may take to leave before they are killed.
_JOIN_TIMEOUT_S = 30.0
_STORE_FILE = "ddp-rendezvous"


class ForkedRanks(ClusterEnvironment):
    """One node of ``world_size`` ranks that already run (forked by :func:`data_parallel`)."""

    def __init__(self, *, world_size: int, rank: int) -> None:
        self._world_size, self._rank = world_size, rank

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        # Unused: the process group is initialised from the file store before Lightning asks.
        return "127.0.0.1"

    @property
    def main_port(self) -> int:
        return 0

    @staticmethod
    def detect() -> bool:
        return False

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        if size != self._world_size:
            raise TrainingError("bad_request", f"Lightning asked for {size} ranks; {self._world_size} were started")

    def global_rank(self) -> int:
        return self._rank

    def set_global_rank(self, rank: int) -> None:
        if rank != self._rank:
            raise TrainingError("bad_request", f"Lightning placed rank {self._rank} as rank {rank}")

    def local_rank(self) -> int:
        return self._rank

    def node_rank(self) -> int:
        return 0


@contextlib.contextmanager
def data_parallel(world_size: int, *, backend: str, store_dir: Path) -> Iterator[ForkedRanks]:
    """Run the block on ``world_size`` ranks joined in one process group over ``backend``.

    Yields this process's :class:`ForkedRanks`; only rank 0 comes out of the block. Raises
    TrainingError("training_error") in rank 0 when another rank failed.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    store_path = store_dir / _STORE_FILE
    store_path.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[int] = []
    rank = 0
    for other in range(1, world_size):
        pid = os.fork()
        if pid == 0:
            rank, children = other, []
            break
        children.append(pid)
    if rank:
        yield from _forked_rank(rank, world_size=world_size, backend=backend, store_path=store_path)
    try:
        _join(0, world_size=world_size, backend=backend, store_path=store_path)
        yield ForkedRanks(world_size=world_size, rank=0)
    except BaseException:
        _kill(children)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        store_path.unlink(missing_ok=True)
    failed = _wait(children)
    if failed:
        raise TrainingError("training_error", f"data-parallel rank(s) {failed} of {world_size} failed")


def _join(rank: int, *, world_size: int, backend: str, store_path: Path) -> None:
    # torch re-exports FileStore from its C extension without marking it public for type checkers.
    store = dist.FileStore(str(store_path), world_size)  # type: ignore[attr-defined]
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def _forked_rank(rank: int, *, world_size: int, backend: str, store_path: Path) -> Iterator[ForkedRanks]:
    """A forked rank's whole life: join, run the block, leave the process (never returns)."""
    code = 1
    try:
        _join(rank, world_size=world_size, backend=backend, store_path=store_path)
        yield ForkedRanks(world_size=world_size, rank=rank)
        dist.destroy_process_group()
        code = 0
    except BaseException:  # noqa: BLE001 - a rank's last resort: its traceback to stderr, a status to rank 0
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _kill(children: list[int]) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _wait(children: list[int]) -> list[int]:
    """Reap the other ranks (killing those still there after _JOIN_TIMEOUT_S); the ranks that failed."""
    deadline = time.monotonic() + _JOIN_TIMEOUT_S
    failed: list[int] = []
    pending = dict(enumerate(children, start=1))
    while pending:
        for rank, pid in list(pending.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del pending[rank]
                if os.waitstatus_to_exitcode(status) != 0:
                    failed.append(rank)
        if pending and time.monotonic() > deadline:
            _kill(list(pending.values()))
            failed += list(pending)
            break
        if pending:
            time.sleep(0.01)
    return sorted(failed)


__all__ = ["COLLECTIVE_TIMEOUT_S", "ForkedRanks", "data_parallel"]
