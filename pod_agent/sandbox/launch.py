"""How a worker is launched: the uid it runs as, its environment, and the bwrap
command line that shows it only the Python environment (read-only), the task's
input (read-only), scratch (read-write) and, for GPU tasks, ``/dev/nvidia*``.

Owns command building only (pure functions, unit-tested without running
anything); the runner starts the process and probe.py tries it once.
"""

from __future__ import annotations

import os
import pwd
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pod_agent
from pod_agent.errors import SandboxError

BOOTSTRAP_MODULE = "pod_agent.sandbox.bootstrap"
# Where the worker sees its directories inside the mount namespace (host paths stay hidden).
SANDBOX_INPUT = Path("/sandbox/input")
SANDBOX_WORK = Path("/sandbox/work")
# CPU topology is harmless and torch/OpenMP read it to size thread pools.
_CPU_INFO = "/sys/devices/system/cpu"
# What a process reads about itself, beneath /proc/self and /proc/thread-self. Landlock rules are
# made by the bootstrap inside the worker, so "self" resolves to the worker's own /proc/<pid> (and
# its main thread's task dir). Never the whole directory: /proc/self/net (where /proc/net points) is
# the host's socket tables when there is no network namespace, and task/<tid>/net is the same again.
# A rule binds a procfs inode; should the kernel evict and remake one under memory pressure, reads of
# that file fail (EACCES) rather than widen.
_PROC_SELF_FILES = ("auxv", "cgroup", "cmdline", "comm", "environ", "fd", "fdinfo", "io", "limits", "maps", "smaps",
                    "smaps_rollup", "stat", "statm", "status")
_PROC_SELF = tuple(f"{base}/{name}" for base in ("/proc/self", "/proc/thread-self") for name in _PROC_SELF_FILES)
# Host-wide /proc files the worker reads, each one file, read-only, and none naming another process:
# torch's cpuinfo library parses /proc/cpuinfo to size its thread pools (it logs errors without it).
_PROC_FILES = ("/proc/cpuinfo",)
# The NVIDIA user-space driver reads its module parameters and the device majors to open the GPU.
_GPU_PROC = ("/proc/driver/nvidia", "/proc/devices")
# What the NVIDIA user-space driver reads besides the device nodes.
_GPU_SYSFS = ("/sys/bus/pci", "/sys/devices", "/sys/module/nvidia")


@dataclass(frozen=True)
class Identity:
    """The uid/gid a worker runs as; ``dedicated`` when it is not the agent's own uid."""

    user: str
    uid: int
    gid: int
    dedicated: bool


def resolve_identity(sandbox_user: str) -> Identity:
    """As root: the configured unprivileged user. Otherwise: the agent's own (non-root) uid."""
    if os.geteuid() != 0:
        uid = os.geteuid()
        return Identity(pwd.getpwuid(uid).pw_name if _has_pwent(uid) else str(uid), uid, os.getegid(), False)
    try:
        entry = pwd.getpwnam(sandbox_user)
    except KeyError as exc:
        raise SandboxError(
            "no_sandbox_user",
            f"security.sandbox_user {sandbox_user!r} does not exist: create it with "
            f"`useradd --system --no-create-home {sandbox_user}` or name another unprivileged user",
        ) from exc
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise SandboxError(
            "no_sandbox_user", f"security.sandbox_user {sandbox_user!r} is uid/gid 0: name an unprivileged user"
        )
    return Identity(sandbox_user, entry.pw_uid, entry.pw_gid, True)


def _has_pwent(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def python_ro_paths(entry_path: Path | None = None) -> list[Path]:
    """Directories the worker needs read-only: the interpreter, stdlib, venv, pod_agent, the entry's dir."""
    candidates = [Path("/usr"), Path(sys.base_prefix), Path(sys.prefix),
                  Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"]),
                  Path(pod_agent.__file__).resolve().parent, Path(sys.executable).parent]
    if entry_path is not None:
        candidates.append(entry_path.resolve())
    # The venv's python is usually a symlink into the base interpreter's directory.
    candidates.append(Path(os.path.realpath(sys.executable)).parent)
    kept: list[Path] = []
    for path in sorted({p for p in candidates if p.exists()}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def bootstrap_argv() -> list[str]:
    return [sys.executable, "-I", "-m", BOOTSTRAP_MODULE]


def worker_env(identity: Identity, *, home: Path, gpu: bool) -> dict[str, str]:
    """The whole environment a worker gets: nothing of the agent's (keys, tokens, config paths)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "USER": identity.user,
           "LOGNAME": identity.user, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           # Lightning/matplotlib caches would otherwise aim at $HOME/.cache and a missing /etc.
           "MPLCONFIGDIR": str(home / ".mpl"), "XDG_CACHE_HOME": str(home / ".cache"),
           # Arrow's jemalloc/mimalloc pools reserve about 1 GiB of address space once pyarrow.dataset loads;
           # RLIMIT_DATA counts it, so a task cap of 1.5 GiB left a prepared worker no room to start a thread.
           # The system allocator reserves nothing ahead, and RLIMIT_DATA then caps what is really used.
           "ARROW_DEFAULT_MEMORY_POOL": "system"}
    if gpu:
        for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            if name in os.environ:
                env[name] = os.environ[name]
    return env


def gpu_device_paths(dev_root: Path = Path("/dev")) -> list[Path]:
    """The NVIDIA device nodes to bind for a GPU task (``/dev/nvidia*`` and ``/dev/nvidia-caps``)."""
    return sorted(dev_root.glob("nvidia*"))


def bwrap_argv(*, bwrap: str, ro_paths: list[Path], input_dir: Path | None, env: dict[str, str], gpu: bool,
               tmpfs_bytes: int, dev_root: Path = Path("/dev"), command: list[str] | None = None) -> list[str]:
    """The bubblewrap command: every namespace, no capabilities, no user namespaces inside,
    dies with the agent, own session, empty environment, and only the binds listed.
    ``command`` defaults to the bootstrap; the probe runs a trial in the same confinement.

    Scratch (/sandbox/work), /tmp and /dev/shm are size-capped tmpfs: nothing the worker
    writes reaches the host's disks, and the pages count against the task's memory cgroup.
    """
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    for name, value in sorted(env.items()):
        argv += ["--setenv", name, value]
    for link in ("bin", "lib", "lib32", "lib64", "sbin"):
        host = Path("/") / link
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    # The tmpfs mounts come before the Python tree's binds: a venv or checkout that lives
    # under /tmp must be bound on top of the sandbox's own /tmp, not hidden by it.
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm",
             "--size", str(tmpfs_bytes), "--tmpfs", "/tmp"]
    for path in ro_paths:
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--ro-bind-try", _CPU_INFO, _CPU_INFO,
             # ctypes.util.find_library (pyseccomp finds libseccomp with it) reads the loader cache.
             "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    if input_dir is not None:
        argv += ["--ro-bind", str(input_dir), str(SANDBOX_INPUT)]
    argv += ["--perms", "0700", "--size", str(tmpfs_bytes), "--tmpfs", str(SANDBOX_WORK),
             "--chdir", str(SANDBOX_WORK)]
    if gpu:
        for device in gpu_device_paths(dev_root):
            argv += ["--dev-bind", str(device), str(Path("/dev") / device.relative_to(dev_root))]
        for sysfs in _GPU_SYSFS:
            argv += ["--ro-bind-try", sysfs, sysfs]
    return argv + ["--"] + (bootstrap_argv() if command is None else command)


def landlock_paths(*, ro_paths: list[Path], gpu: bool, dev_root: Path = Path("/dev")) -> tuple[list[str], list[str]]:
    """Read-only and read-write trees for the Landlock fallback (no mount namespace to hide the rest).

    The runner adds the worker's input (read-only) and work (read-write) dirs. Of ``/proc`` only the
    worker's own files (``_PROC_SELF``) and ``_PROC_FILES`` (and ``_GPU_PROC`` for GPU tasks): no other
    process, no socket table.
    """
    read_only = [str(p) for p in ro_paths] + ["/bin", "/lib", "/lib64", *_PROC_SELF, *_PROC_FILES, _CPU_INFO,
                                               "/dev/urandom", "/dev/random", "/etc/ld.so.cache"]
    read_write = ["/dev/null", "/dev/zero", "/dev/shm"]
    if gpu:
        read_write += [str(d) for d in gpu_device_paths(dev_root)]
        read_only += [*_GPU_SYSFS, *_GPU_PROC]
    return read_only, read_write
