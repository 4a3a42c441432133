"""The agent's check, from outside, that a worker has a network namespace of its own holding only loopback.

Owns the one condition under which a worker's seccomp filter may allow IP sockets
(``confine.ConfinePlan.loopback_network``, for data-parallel ranks that meet over TCP): every
process of the worker's tree below the launcher sits in a network namespace that is not the
agent's and has no interface but ``lo``. The agent reads both facts from the host's ``/proc``;
nothing the worker says counts. process.py asks before it sends the ``go`` frame, when the
pod grants more than one rank and bubblewrap made the namespaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pod_agent.errors import SandboxError

_PROC = Path("/proc")
# /proc/<pid>/net/dev: two header lines, then "iface: counters" per interface of the pid's namespace.
_DEV_HEADER_LINES = 2


def _namespace(pid: int | str) -> tuple[int, int]:
    stat = os.stat(_PROC / str(pid) / "ns" / "net")
    return stat.st_dev, stat.st_ino


def interfaces(pid: int) -> list[str]:
    """The network interfaces of ``pid``'s network namespace."""
    lines = (_PROC / str(pid) / "net" / "dev").read_text().splitlines()[_DEV_HEADER_LINES:]
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


def check_loopback_only(pids: Iterable[int]) -> None:
    """Raise SandboxError("network_not_private") unless every pid is in a namespace of loopback only,
    and not the agent's; an empty ``pids`` is refused too (nothing was seen)."""
    agent = _namespace("self")
    seen = False
    for pid in pids:
        try:
            own, names = _namespace(pid), interfaces(pid)
        except OSError as exc:
            raise SandboxError("network_not_private", f"worker process {pid}: its network namespace "
                               f"cannot be read ({exc}); data-parallel ranks need bubblewrap's") from exc
        if own == agent or names != ["lo"]:
            raise SandboxError("network_not_private", f"worker process {pid} shares a network (interfaces "
                               f"{names}); data-parallel ranks need a namespace of their own: run at the strict "
                               f"sandbox level or set training.devices = 1")
        seen = True
    if not seen:
        raise SandboxError("network_not_private", "the worker runs without bubblewrap's namespaces, so it has no "
                           "network of its own for data-parallel ranks: run at the strict sandbox level or set "
                           "training.devices = 1")


__all__ = ["check_loopback_only", "interfaces"]
