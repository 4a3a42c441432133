"""Which sandbox layers this host offers, and what each configured level needs.

Owns the start-up probe (each layer: active or unavailable, why, and how to
enable it), the rules of ``strict`` / ``standard`` / ``none`` (fail-closed:
:func:`plan_layers` raises SandboxUnavailable), the check that a worker's
interpreter imports the very ``pod_agent`` tree the agent binds into the
sandbox (:func:`check_worker_package`, at every level), and the lines
``pod-agent check`` prints. It tries each layer for real where that is cheap
(a bwrap run as the sandbox uid, a cgroup created and removed).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pod_agent
from pod_agent.errors import SandboxError, SandboxUnavailable
from pod_agent.sandbox.cgroup import TaskCgroup, detect_cgroups
from pod_agent.sandbox.confine import build_seccomp_filter
from pod_agent.sandbox.landlock import landlock_abi
from pod_agent.sandbox.launch import (
    SANDBOX_WORK,
    Identity,
    bootstrap_argv,
    bwrap_argv,
    python_ro_paths,
    resolve_identity,
    worker_env,
)

if TYPE_CHECKING:
    from pod_agent.config import PodSettings, SecuritySection

LAYERS: tuple[str, ...] = ("uid", "rlimits", "namespaces", "seccomp", "landlock", "cgroup")
LEVELS: tuple[str, ...] = ("strict", "standard", "none")
# A trial start must be quick; a hung bwrap means the layer is unusable.
_TRIAL_TIMEOUT_S = 20.0
_TRIAL_CODE = "import pod_agent.sandbox.bootstrap"
_TRIAL_TMPFS_BYTES = 64 << 20  # the trial writes nothing; any cap will do
_NAMESPACES_REMEDY = ("apt-get install bubblewrap; allow unprivileged user namespaces "
                      "(sysctl kernel.unprivileged_userns_clone=1)")
_LANDLOCK_REMEDY = "boot a kernel >= 5.13 with landlock in the lsm= list"


@dataclass(frozen=True)
class LayerReport:
    """One layer's state on this host: ``why`` explains it, ``remedy`` says how to enable it."""

    name: str
    active: bool
    why: str
    remedy: str = ""
    # uid layer only: workers keep the (non-root) agent's own uid, so file modes and ptrace's
    # same-uid rule protect nothing of the agent's; only namespaces or Landlock can.
    shares_agent_uid: bool = False


def _trial(argv: list[str], identity: Identity | None) -> str | None:
    """Run argv as the sandbox identity; None on success, else the reason."""
    kwargs: dict[str, object] = {}
    if identity is not None and identity.dedicated:
        kwargs = {"user": identity.uid, "group": identity.gid, "extra_groups": []}
    try:
        done = subprocess.run(argv, capture_output=True, timeout=_TRIAL_TIMEOUT_S, cwd="/", check=False,
                              env={"PATH": "/usr/bin:/bin"}, **kwargs)  # type: ignore[call-overload]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{argv[0]} could not start: {exc}"
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {done.returncode}"
    return None


def _probe_uid(sandbox_user: str) -> tuple[LayerReport, Identity | None]:
    try:
        identity = resolve_identity(sandbox_user)
    except SandboxError as exc:
        return LayerReport("uid", False, exc.detail, f"useradd --system --no-create-home {sandbox_user}"), None
    if not identity.dedicated and identity.uid == 0:
        return LayerReport("uid", False, "agent runs as root without a sandbox user", "run as root with "
                           "security.sandbox_user set, or as an unprivileged user"), None
    failure = _trial([*bootstrap_argv()[:2], "-c", _TRIAL_CODE], identity)
    if failure is not None:
        return LayerReport("uid", False, f"uid {identity.uid} cannot run this Python environment: {failure}",
                           "put the virtualenv outside any 0700 home (e.g. /opt/pod-agent/venv) and make it "
                           f"readable by {identity.user}"), identity
    if identity.dedicated:
        why = f"workers run as {identity.user} (uid {identity.uid}, gid {identity.gid}, no supplementary groups)"
    else:
        why = (
            f"agent is unprivileged (uid {identity.uid}); workers share its uid, so namespaces/Landlock hide its files"
        )
    return LayerReport("uid", True, why, shares_agent_uid=not identity.dedicated), identity


def _probe_namespaces(identity: Identity | None) -> LayerReport:
    bwrap = shutil.which("bwrap")
    remedy = _NAMESPACES_REMEDY
    if bwrap is None:
        return LayerReport("namespaces", False, "bwrap not found on PATH", remedy)
    if identity is None:
        return LayerReport("namespaces", False, "no usable sandbox uid to start bwrap as", "fix the uid layer first")
    # The worker's own confinement (launch.bwrap_argv), running a trial instead of a task.
    argv = bwrap_argv(
        bwrap=bwrap, ro_paths=python_ro_paths(), input_dir=None, gpu=False, tmpfs_bytes=_TRIAL_TMPFS_BYTES,
        env=worker_env(identity, home=SANDBOX_WORK, gpu=False),
        command=[*bootstrap_argv()[:2], "-c", _TRIAL_CODE],
    )
    failure = _trial(argv, identity)
    if failure is not None:
        return LayerReport("namespaces", False, f"bwrap failed: {failure}",
                           remedy + "; under Docker's default seccomp profile use seccomp + Landlock instead")
    return LayerReport("namespaces", True, f"{bwrap}: net, mount, pid, ipc, uts, user; no capabilities")


def _self_test(layer: str, identity: Identity | None) -> str | None:
    code = f"from pod_agent.sandbox.confine import self_test; self_test({layer!r})"
    return _trial([*bootstrap_argv()[:2], "-c", code], identity)


def _probe_seccomp(identity: Identity | None) -> LayerReport:
    remedy = "apt-get install libseccomp2; pip install pyseccomp"
    try:
        build_seccomp_filter()
    except (SandboxError, OSError) as exc:
        return LayerReport("seccomp", False, str(exc), remedy)
    failure = _self_test("seccomp", identity)
    if failure is not None:
        return LayerReport("seccomp", False, f"self-test failed: {failure}", remedy)
    return LayerReport("seccomp", True, "pyseccomp over libseccomp2: non-AF_UNIX sockets, ptrace, bpf, io_uring, "
                       "mount, unshare, setns, keyctl denied")


def _probe_landlock(identity: Identity | None) -> LayerReport:
    abi = landlock_abi()
    remedy = _LANDLOCK_REMEDY
    if abi < 1:
        return LayerReport("landlock", False, "kernel offers no Landlock ABI", remedy)
    failure = _self_test("landlock", identity)
    if failure is not None:
        return LayerReport("landlock", False, f"self-test failed: {failure}", remedy)
    tcp = "files + TCP" if abi >= 4 else "files only"
    scope = ", signals and abstract sockets scoped" if abi >= 6 else ""
    return LayerReport("landlock", True, f"ABI {abi}: {tcp}{scope} (for each fork-server child; for every "
                       "worker where namespaces are unavailable)")


def _probe_cgroup() -> LayerReport:
    remedy = ("run the agent as root, or under systemd with Delegate=yes (cgroup v2 with memory and pids "
              "delegated)")
    try:
        support = detect_cgroups()
        TaskCgroup.create(support, memory_bytes=256 << 20, max_pids=8).remove()
    except (SandboxError, OSError) as exc:
        return LayerReport("cgroup", False, str(exc), remedy)
    where = ", ".join(f"{k}={v}" for k, v in sorted(support.parents.items()))
    return LayerReport("cgroup", True, f"cgroup v{support.version} memory + pids caps, whole-tree kill ({where})")


_WHICH_PACKAGE = "import pod_agent, sys; sys.stdout.write(pod_agent.__file__ or '')"
_FIX_TREE = ("start pod-agent from a directory that holds no other pod_agent tree and without PYTHONPATH naming "
             "one, or install this tree into {prefix} (pip install -e {checkout})")


@functools.cache
def _worker_package_dir(mine: Path) -> Path:
    """The pod_agent package a worker's interpreter imports. Cached, as it cannot change under a running
    agent; a failed trial raises SandboxError and is not cached (a timeout under load is tried again)."""
    try:
        # The worker's own flags (-I: no cwd, no PYTHONPATH, no user site) and cwd, as the bootstrap starts.
        done = subprocess.run([*bootstrap_argv()[:2], "-c", _WHICH_PACKAGE], capture_output=True, cwd="/",
                              timeout=_TRIAL_TIMEOUT_S, env={"PATH": "/usr/bin:/bin"}, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError("package_check_failed",
                           f"{sys.executable} -I could not run to find the pod_agent a worker imports: {exc}") from exc
    path = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0 or not path:
        raise SandboxError(
            "package_mismatch",
            f"this agent runs pod_agent from {mine}, but a sandboxed worker ({sys.executable} -I) "
            "cannot import pod_agent at all: " + _FIX_TREE.format(prefix=sys.prefix, checkout=mine.parent),
        )
    return Path(path).resolve().parent


def check_worker_package() -> Path:
    """The pod_agent tree this agent binds into the sandbox, once shown to be the one a worker imports.

    An agent started with another pod_agent tree on its path (``python -m pod_agent`` in a directory
    holding another checkout, or PYTHONPATH) binds that tree, while its workers (``python -I``) import
    the installed one: every task would fail as uncaught_exception with nothing saying why. Raises
    SandboxError("package_mismatch") naming both trees and the fix.
    """
    mine = Path(pod_agent.__file__).resolve().parent
    theirs = _worker_package_dir(mine)
    if theirs != mine:
        raise SandboxError(
            "package_mismatch",
            f"this agent runs pod_agent from {mine}, but a sandboxed worker ({sys.executable} -I) imports {theirs}: "
            + _FIX_TREE.format(prefix=sys.prefix, checkout=mine.parent),
        )
    return mine


_CACHE: dict[str, tuple[LayerReport, ...]] = {}


def probe_layers(security: SecuritySection, *, refresh: bool = False) -> list[LayerReport]:
    """Probe every layer once per sandbox user (cached; ``refresh`` probes again)."""
    key = security.sandbox_user
    if refresh or key not in _CACHE:
        uid_report, identity = _probe_uid(security.sandbox_user)
        reports = (
            uid_report,
            LayerReport(
                "rlimits",
                True,
                "CPU, DATA, NOFILE, FSIZE, CORE=0"
                + (
                    ", NPROC (fallback when no pids cgroup)"
                    if identity is not None and identity.dedicated
                    else " (NPROC needs a dedicated uid)"
                ),
            ),
            _probe_namespaces(identity if uid_report.active else None),
            _probe_seccomp(identity),
            _probe_landlock(identity),
            _probe_cgroup(),
        )
        _CACHE[key] = reports
    return list(_CACHE[key])


def plan_layers(level: str, reports: list[LayerReport]) -> frozenset[str]:
    """The layers a worker gets at ``level``; raises SandboxUnavailable when a required one is missing.

    strict: non-root uid, rlimits, and network+filesystem isolation (namespaces, or seccomp + Landlock).
    standard: non-root uid, rlimits and the seccomp network deny; plus whatever else is active.
    none: rlimits and the cgroup only (development; the runner warns on every task).
    At strict and standard, workers that share a non-root agent's uid also need namespaces or
    Landlock: otherwise a model reads the agent's key and opens its ``/proc/<pid>/mem``.
    """
    active = {r.name for r in reports if r.active}
    by_name = {r.name: r for r in reports}

    def need(layer: str) -> None:
        if layer not in active:
            report = by_name[layer]
            raise SandboxUnavailable(level, f"{layer} ({report.why})", report.remedy or "see pod-agent check")

    if level == "none":
        return frozenset(active & {"rlimits", "cgroup"})
    if level not in ("strict", "standard"):
        raise SandboxUnavailable(level, "a known level", "set security.sandbox to strict, standard or none")
    need("uid")
    if by_name["uid"].shares_agent_uid and not {"namespaces", "landlock"} & active:
        ns, landlock = by_name["namespaces"], by_name["landlock"]
        raise SandboxUnavailable(
            level, f"namespaces ({ns.why}) or Landlock ({landlock.why}), because workers share the agent's uid",
            f"{_NAMESPACES_REMEDY}; or {_LANDLOCK_REMEDY}; or run the agent as root with security.sandbox_user set "
            "(workers then get a uid of their own)")
    need("rlimits")
    if level == "standard":
        need("seccomp")
    elif "namespaces" not in active and not {"seccomp", "landlock"} <= active:
        missing = "seccomp" if "seccomp" not in active else "landlock"
        report = by_name["namespaces"]
        raise SandboxUnavailable(level, f"namespaces ({report.why}) or seccomp + Landlock ({missing} missing)",
                                 report.remedy)
    chosen = active & {"uid", "rlimits", "namespaces", "seccomp", "cgroup"}
    if "namespaces" not in active and "landlock" in active:
        chosen.add("landlock")
    return frozenset(chosen)


# Landlock ABI 6 scopes signals and abstract unix sockets to a domain: a fork child, in a domain of
# its own, can then signal or reach neither its siblings nor the zygote (same uid, same pid namespace).
_FORK_LANDLOCK_ABI = 6


def fork_server_why_not(layers: frozenset[str], reports: list[LayerReport]) -> str | None:
    """Why tasks cannot run as children of a fork server (zygote.py) here, or None when they can.

    A child shares the zygote's uid, pid, mount and IPC namespaces with its siblings; what a launched
    worker gets from namespaces of its own, a child gets from its own cgroup (caps, whole-tree kill),
    its own Landlock domain (its scratch, its input, its /proc/self; signals and abstract sockets
    scoped) and the seccomp filter the zygote loads. Without any of these the warm pool serves.
    """
    missing = [layer for layer in ("namespaces", "seccomp", "cgroup") if layer not in layers]
    if missing:
        return f"needs {', '.join(missing)} in force"
    landlock = next((r for r in reports if r.name == "landlock"), None)
    if landlock is None or not landlock.active:
        return "needs Landlock for each child's own files"
    abi = landlock_abi()
    if abi < _FORK_LANDLOCK_ABI:
        return f"needs Landlock ABI >= {_FORK_LANDLOCK_ABI} to scope signals between children (this kernel: {abi})"
    return None


def best_level(reports: list[LayerReport]) -> str:
    """The strongest level this host can enforce (for the demo's start-up line)."""
    for level in ("strict", "standard"):
        try:
            plan_layers(level, reports)
        except SandboxUnavailable:
            continue
        return level
    return "none"


def sandbox_check_lines(settings: PodSettings) -> list[str]:
    """What ``pod-agent check`` prints for the sandbox: the level, then each layer."""
    return sandbox_report_lines(settings.security.sandbox, probe_layers(settings.security))


def sandbox_check_detail(settings: PodSettings) -> str:
    """``pod-agent check``'s sandbox entry: the verdict and one line per layer; raises
    SandboxError("level_not_satisfied") carrying the same lines when tasks would be refused, and
    SandboxError("package_mismatch") when workers would import another pod_agent tree."""
    check_worker_package()
    head, *layers = sandbox_check_lines(settings)
    detail = "\n".join([head.removeprefix("sandbox: "), *layers])
    if "NOT satisfied" in head:
        raise SandboxError("level_not_satisfied", detail)
    return detail


def sandbox_report_lines(level: str, reports: list[LayerReport]) -> list[str]:
    """The level verdict, then one line per layer: active/unavailable, why, how to enable."""
    try:
        layers = plan_layers(level, reports)
        head = f"sandbox: level {level!r} satisfied (layers in force: {', '.join(sorted(layers))})"
        fork_why_not = fork_server_why_not(layers, reports)
    except SandboxUnavailable as exc:
        head = f"sandbox: level {level!r} NOT satisfied, tasks will be refused: {exc.detail}"
        fork_why_not = "the level is not satisfied"
    lines = [head]
    for report in reports:
        state = "active" if report.active else "unavailable"
        line = f"  {report.name:<10} {state:<11} {report.why}"
        if not report.active and report.remedy:
            line += f" (enable: {report.remedy})"
        lines.append(line)
    if fork_why_not is None:
        lines.append("  forks      active      tasks run in fresh children of a confined fork server (imports "
                     "paid once; each child its own cgroup, Landlock domain and scratch)")
    else:
        lines.append(f"  forks      unavailable {fork_why_not}; tasks run in workers from the warm pool")
    return lines
