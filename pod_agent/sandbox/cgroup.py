"""Per-task cgroups: memory and process caps, OOM detection, and whole-tree kill.

Owns finding where the agent may create cgroups (v2 unified, or v1 ``memory``
and ``pids`` hierarchies as on hybrid hosts), creating one group per worker
under the agent's own group, moving a process tree into it, reading what its
memory controller counted (OOM kills, hits of the cap), killing everything
in it (``cgroup.kill`` on v2; a SIGKILL sweep until empty on v1, where a
forking tree cannot escape because ``pids.max`` stops it), and removing it.
The runner decides when, and what the counts mean for the task; probe.py
reports whether this layer is active.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pod_agent.errors import SandboxError

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Sweeps before giving up on a v1 group that keeps refilling; pids.max bounds each round.
_KILL_ROUNDS = 200


def _own_cgroup_paths() -> dict[str, str]:
    """Controller name (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


@dataclass(frozen=True)
class MemoryEvents:
    """What a group's memory controller counted since the group was made.

    ``oom_kills``: processes the OOM killer killed at this group's cap (v2 ``memory.events``
    ``oom_kill``; v1 ``memory.oom_control`` ``oom_kill``), None where the kernel does not count
    them (v1 before 4.13). ``cap_hits``: times usage reached the cap (v2 ``max``; v1
    ``memory.failcnt``), which reclaim often survives, so alone it proves nothing.
    """

    oom_kills: int | None
    cap_hits: int


def _counters(path: Path) -> dict[str, int]:
    """``key value`` lines of a cgroup file; a file the kernel lacks counts nothing."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    counters: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            counters[key] = int(value)
    return counters


def _single(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class CgroupSupport:
    """Where per-task groups go: ``parents`` maps controller ("memory", "pids") to a directory."""

    version: int
    parents: dict[str, Path]


def detect_cgroups() -> CgroupSupport:
    """Find writable parents for memory and pids groups; raises SandboxError saying why not."""
    if os.geteuid() != 0:
        raise SandboxError("cgroup_unavailable", "the agent is not root and has no delegated cgroup")
    own = _own_cgroup_paths()
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        parent = CGROUP_ROOT / own.get("", "/").lstrip("/")
        if parent.name == _AGENT_LEAF:
            # Already moved by an earlier call: worker groups are the leaf's siblings.
            parent = parent.parent
        if not {"memory", "pids"} <= set((parent / "cgroup.subtree_control").read_text().split()):
            _delegate_v2(parent)
        return CgroupSupport(2, {"memory": parent, "pids": parent})
    parents: dict[str, Path] = {}
    for controller in ("memory", "pids"):
        mount = CGROUP_ROOT / controller
        if not (mount / "cgroup.procs").exists():
            raise SandboxError("cgroup_unavailable", f"cgroup v1 controller {controller!r} is not mounted at {mount}")
        parents[controller] = mount / own.get(controller, "/").lstrip("/")
    return CgroupSupport(1, parents)


# Where the agent moves itself on cgroup v2 so that its own group may hand controllers to children.
_AGENT_LEAF = "pod-agent"


def _delegate_v2(parent: Path) -> None:
    """Enable memory and pids for children of the agent's v2 group (systemd Delegate=yes, or a
    container's cgroup namespace): v2 allows that only once the group holds no processes, so the
    agent first moves itself into a leaf child."""
    if not {"memory", "pids"} <= set((parent / "cgroup.controllers").read_text().split()):
        raise SandboxError("cgroup_unavailable",
                           f"cgroup v2 group {parent} has no memory/pids controllers (run the agent under "
                           "systemd with Delegate=yes, or give its container a delegated cgroup)")
    try:
        leaf = parent / _AGENT_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        (parent / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError as exc:
        raise SandboxError("cgroup_unavailable",
                           f"cannot delegate memory and pids below {parent}: {exc} (other processes share the "
                           "agent's cgroup; give the agent its own, e.g. systemd Delegate=yes)") from exc


class TaskCgroup:
    """One worker's group(s). Create with :meth:`create`; always :meth:`remove` when done."""

    def __init__(self, support: CgroupSupport, dirs: list[Path]) -> None:
        self._support = support
        self._dirs = dirs

    @classmethod
    def create(cls, support: CgroupSupport, *, memory_bytes: int, max_pids: int) -> TaskCgroup:
        name = f"pod-agent-sandbox-{uuid.uuid4().hex[:12]}"
        dirs: list[Path] = []
        try:
            for parent in dict.fromkeys(support.parents.values()):
                path = parent / name
                path.mkdir()
                dirs.append(path)
            group = cls(support, dirs)
            group.set_limits(memory_bytes=memory_bytes, max_pids=max_pids)
        except OSError as exc:
            for path in dirs:
                path.rmdir()
            raise SandboxError("cgroup_failed", f"creating cgroup {name}: {exc}") from exc
        return group

    def _dir(self, controller: str) -> Path:
        parent = self._support.parents[controller]
        return next(d for d in self._dirs if d.parent == parent)

    def set_limits(self, *, memory_bytes: int, max_pids: int) -> None:
        """Set (or lower, for a warm worker taking a task) the memory and pids caps."""
        mem = self._dir("memory")
        if self._support.version == 2:
            (mem / "memory.max").write_text(str(memory_bytes))
            swap = mem / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        else:
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
            memsw = mem / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(memory_bytes))
        (self._dir("pids") / "pids.max").write_text(str(max_pids))

    def add(self, pids: list[int]) -> None:
        """Move these processes in; the caller guarantees none of them forks meanwhile."""
        for path in self._dirs:
            for pid in pids:
                try:
                    (path / "cgroup.procs").write_text(str(pid))
                except ProcessLookupError:
                    continue

    def memory_events(self) -> MemoryEvents:
        """The group's OOM kills and cap hits so far (see :class:`MemoryEvents`)."""
        mem = self._dir("memory")
        if self._support.version == 2:
            events = _counters(mem / "memory.events")
            return MemoryEvents(oom_kills=events.get("oom_kill"), cap_hits=events.get("max", 0))
        # With memsw set, the combined counter is the one that fails when swap is in play.
        hits = max(_single(mem / "memory.failcnt"), _single(mem / "memory.memsw.failcnt"))
        return MemoryEvents(oom_kills=_counters(mem / "memory.oom_control").get("oom_kill"), cap_hits=hits)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self._dirs:
            try:
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL every process in the group, including setsid daemons; returns once it is empty."""
        if self._support.version == 2:
            kill_file = self._dirs[0] / "cgroup.kill"
            if kill_file.exists():
                kill_file.write_text("1")
        for _round in range(_KILL_ROUNDS):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            time.sleep(0.005)
        raise SandboxError("tree_survived", f"processes {self.pids()} survived {_KILL_ROUNDS} kill sweeps")

    def remove(self) -> None:
        """Kill what is left and remove the group directories (retrying while the kernel reaps)."""
        self.kill_all()
        for path in self._dirs:
            for _attempt in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def descendants(root_pid: int) -> list[int]:
    """``root_pid`` and every process below it, from one scan of /proc (no /proc/*/children here)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields resume after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found
