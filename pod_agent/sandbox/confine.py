"""Child-side confinement: rlimits, the seccomp filter and Landlock, applied by
the bootstrap to itself before any entry or model code is imported.

Owns what each layer denies. What the parent decides (which layers, which
limits, which paths) arrives in the ``go`` frame as a :class:`ConfinePlan`
dict; the bwrap namespaces and the cgroup are set up by the parent (runner.py).
"""

from __future__ import annotations

import errno
import resource
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pod_agent.errors import SandboxError
from pod_agent.sandbox.landlock import enforce_landlock

# Denied outright: tracing, reading other processes, new kernel attack surface,
# namespace and mount games, and the kernel keyring. Any non-AF_UNIX socket is
# denied separately (the network deny that `standard` requires), except under
# ``loopback_network`` (below).
DENIED_SYSCALLS: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "swapon", "swapoff", "reboot", "acct", "quotactl", "lookup_dcookie",
)
_CLONE_NEWUSER = 0x10000000
# Under ``loopback_network``: IPv4 and IPv6 (gloo's and NCCL's transports between data-parallel ranks), and
# NETLINK_ROUTE, with which getifaddrs() lists interfaces (NCCL finds ``lo`` that way). In the worker's own
# network namespace these reach only its loopback; without capabilities it cannot add a route or a device.
_NETLINK_ROUTE = 0
_LOOPBACK_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK)
_HIGHEST_FAMILY = 64
_RLIMITS: dict[str, int] = {
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
    "core": resource.RLIMIT_CORE,
    "nproc": resource.RLIMIT_NPROC,
}


@dataclass(frozen=True)
class ConfinePlan:
    """What the bootstrap applies to itself: rlimits by name, seccomp on/off, Landlock paths."""

    rlimits: dict[str, int]
    seccomp: bool
    landlock_read_only: tuple[str, ...] | None = None
    landlock_read_write: tuple[str, ...] = ()
    # Without a pid namespace or cgroup, killing the process group is the only whole-tree kill,
    # so the worker must not leave its group (setsid/setpgid denied by the seccomp filter).
    keep_process_group: bool = False
    # Set by the agent only for a worker it has seen in a network namespace of its own holding nothing but
    # loopback (process.py), so that data-parallel ranks can meet over TCP there (_LOOPBACK_FAMILIES).
    loopback_network: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"rlimits": self.rlimits, "seccomp": self.seccomp, "keep_process_group": self.keep_process_group,
                "loopback_network": self.loopback_network,
                "landlock_read_only": list(self.landlock_read_only) if self.landlock_read_only is not None else None,
                "landlock_read_write": list(self.landlock_read_write)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConfinePlan:
        ro = data.get("landlock_read_only")
        return cls(rlimits={str(k): int(v) for k, v in data["rlimits"].items()}, seccomp=bool(data["seccomp"]),
                   landlock_read_only=tuple(ro) if ro is not None else None,
                   landlock_read_write=tuple(data.get("landlock_read_write", ())),
                   keep_process_group=bool(data.get("keep_process_group", False)),
                   loopback_network=bool(data.get("loopback_network", False)))


# The CPU soft limit sends SIGXCPU (a nameable death); the hard limit one second later is SIGKILL.
_CPU_GRACE_S = 1


def _set(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    grace = _CPU_GRACE_S if which == resource.RLIMIT_CPU else 0
    new_hard = value + grace if hard == resource.RLIM_INFINITY else min(value + grace, hard)
    resource.setrlimit(which, (max(min(value, new_hard - grace), 0), new_hard))


def apply_rlimits(limits: dict[str, int]) -> None:
    """Lower each named rlimit to the value given; never raises one."""
    for name, value in limits.items():
        _set(_RLIMITS[name], value)


def lower_cpu_limit(task_cpu_s: int) -> None:
    """Allow ``task_cpu_s`` more CPU seconds from now (a warm worker already spent some in prepare)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _set(resource.RLIMIT_CPU, int(usage.ru_utime + usage.ru_stime) + 1 + task_cpu_s)


def build_seccomp_filter(*, keep_process_group: bool = False, loopback_network: bool = False) -> Any:
    """The filter object (pyseccomp over libseccomp2); raises SandboxError if it cannot be built.

    Sockets: AF_UNIX only; with ``loopback_network``, the families of _LOOPBACK_FAMILIES (netlink
    for NETLINK_ROUTE only).
    """
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, RuntimeError) as exc:
        raise SandboxError("seccomp_unavailable", f"pyseccomp/libseccomp2 not importable: {exc}") from exc
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    if loopback_network:
        # One comparison per argument and rule: every other family gets a rule of its own.
        for family in range(_HIGHEST_FAMILY):
            if family not in _LOOPBACK_FAMILIES:
                flt.add_rule(deny, "socket", seccomp.Arg(0, seccomp.EQ, family))
        flt.add_rule(deny, "socket", seccomp.Arg(0, seccomp.GE, _HIGHEST_FAMILY))
        flt.add_rule(deny, "socket", seccomp.Arg(0, seccomp.EQ, socket.AF_NETLINK),
                     seccomp.Arg(2, seccomp.NE, _NETLINK_ROUTE))
    else:
        flt.add_rule(deny, "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
    flt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
    # clone3 passes flags in memory a filter cannot inspect; ENOSYS makes libc fall back to clone.
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for name in DENIED_SYSCALLS + (("setsid", "setpgid") if keep_process_group else ()):
        try:
            flt.add_rule(deny, name)
        except (OSError, ValueError):
            # A syscall this architecture or libseccomp version does not know cannot be called either.
            continue
    return flt


def apply_seccomp(*, keep_process_group: bool = False, loopback_network: bool = False) -> None:
    try:
        build_seccomp_filter(keep_process_group=keep_process_group, loopback_network=loopback_network).load()
    except OSError as exc:
        raise SandboxError("seccomp_failed", f"loading the seccomp filter failed: {exc}") from exc


def confine(plan: ConfinePlan) -> None:
    """Apply the plan: Landlock first (it needs the paths), then rlimits, then seccomp last."""
    if plan.landlock_read_only is not None:
        enforce_landlock(read_only=[Path(p) for p in plan.landlock_read_only],
                         read_write=[Path(p) for p in plan.landlock_read_write])
    apply_rlimits(plan.rlimits)
    if plan.seccomp:
        apply_seccomp(keep_process_group=plan.keep_process_group, loopback_network=plan.loopback_network)


def self_test(layer: str) -> None:
    """Apply one layer to this (throw-away) process and prove it holds; exit non-zero otherwise.

    Used by probe.py, run as the sandbox uid, so "active" means "denied something for real".
    """
    import sys

    if layer == "seccomp":
        apply_seccomp()
        try:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        except PermissionError:
            return
        sys.exit("seccomp filter loaded but an AF_INET socket was still created")
    if layer == "landlock":
        enforce_landlock(read_only=[Path(sys.prefix), Path(sys.base_prefix)], read_write=[])
        try:
            Path("/proc/self/status").read_bytes()
        except PermissionError:
            return
        sys.exit("Landlock enforced but a file outside the allowed trees was still readable")
    sys.exit(f"no self-test for layer {layer!r}")
