"""Constants and helpers shared by the sandbox tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
from pod_agent.sandbox import SandboxJob, SandboxOutcome, SandboxRunner
from pod_agent.sandbox.runner import Reservation

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
ENTRY_PATH = HERE / "entrypoint"
ENTRY = "sbx_test_entry"
SANDBOX_USER = "pod-sandbox"
SECRET = "canary-" + uuid.uuid4().hex
# Small limits keep the attack corpus fast; each test may lower or raise them. The corpus runs on a
# worker taken from the warm pool (run_model pre-warms it), the path every agent task takes.
ATTACK_LIMITS: dict[str, Any] = {"wall_timeout_s": 20.0, "cpu_time_s": 10, "memory_mb": 256, "max_processes": 32,
                 "max_open_files": 256, "max_file_mb": 8, "max_output_mb": 4, "warm_worker": True,
                 "warm_pool": 1}


def is_live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def leftover_processes(comm: str) -> list[int]:
    """Live processes named ``comm``: the test entry names every worker process it starts after
    the task's token (children inherit it), so other tests' workers never match."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                name = Path(entry.path, "comm").read_text().strip()
            except OSError:
                continue
            if name == comm and is_live(int(entry.name)):
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class Outside:
    """Things on the agent's side of the fence, all in a world-readable tree outside scratch."""

    root: Path
    canary_644: Path
    canary_600: Path
    key_file: Path
    original_data: Path
    tcp: socket.socket
    udp: socket.socket
    unix_path: Path
    unix: socket.socket
    abstract_name: str
    abstract: socket.socket
    comm: str

    def request(self) -> dict[str, Any]:
        return {"canary_644": str(self.canary_644), "canary_600": str(self.canary_600),
                "key_file": str(self.key_file), "original_data": str(self.original_data),
                "tcp_port": self.tcp.getsockname()[1], "udp_port": self.udp.getsockname()[1],
                "unix_path": str(self.unix_path), "abstract_name": self.abstract_name, "agent_pid": os.getpid(),
                "comm": self.comm}


def nothing_arrived(outside: Outside, *, path_socket: bool = True) -> None:
    """Assert no connection or datagram reached the agent's sockets (``path_socket=False`` skips the
    path unix socket, which only a mount namespace or file permissions protect)."""
    listeners = [outside.tcp, outside.abstract] + ([outside.unix] if path_socket else [])
    for listener in listeners:
        with pytest.raises(BlockingIOError):
            listener.accept()
    with pytest.raises(BlockingIOError):
        outside.udp.recvfrom(4096)


RunModel = Callable[..., Awaitable[SandboxOutcome]]




def corpus_runner(scratch: Path, level: str = "strict", *, fork_server: bool, **limits: Any) -> SandboxRunner:
    """A runner under ``scratch`` with the attack limits, on the fork server or (False) the warm pool."""
    return SandboxRunner(SecuritySection(sandbox=level, sandbox_user=SANDBOX_USER),
                         SandboxLimitsSection(**{**ATTACK_LIMITS, "warm_worker": True, **limits}),
                         scratch_root=scratch, fork_server=fork_server)


async def run_corpus(runner: SandboxRunner, tmp_path: Path, model: str, comm: str, *,
                     reservation: Reservation | None = None, **extra: Any) -> SandboxOutcome:
    """Run corpus/<model>.py on ``runner`` (on the ``reservation``'s worker when given); ``comm`` names its
    processes, ``extra`` joins the request."""
    case = tmp_path / uuid.uuid4().hex[:8]
    (case / "input").mkdir(parents=True)
    (case / "input" / "model.py").write_text((CORPUS / f"{model}.py").read_text())
    return await runner.run(SandboxJob(entry=ENTRY, input_dir=case / "input", work_dir=case / "work",
                                       request={"comm": comm, **extra}, entry_path=ENTRY_PATH),
                            reservation=reservation)


def zygote_pids(scratch: Path | None = None) -> list[int]:
    """The zygotes' bwrap processes started by this process (named by a slot under ``scratch`` in their argv,
    when given)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            named = scratch is None or str(scratch).encode() in b" ".join(argv)
            if parent == os.getpid() and argv[0].endswith(b"bwrap") and named:
                found.append(int(entry.name))
    return found


def forked_children(scratch: Path | None = None) -> set[int]:
    """Live processes a zygote of this process (under ``scratch``, when given) forked: interpreters running the
    bootstrap whose parent does too (a fork keeps its zygote's command line; bwrap's own processes name the
    bootstrap in theirs)."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
                commands[int(entry.name)] = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree: set[int] = set()
    frontier = set(zygote_pids(scratch))
    while frontier:
        tree |= frontier
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in tree}
    boot = {pid for pid in tree if b"pod_agent.sandbox.bootstrap" in commands.get(pid, b"")
            and not commands[pid].split(b"\0")[0].endswith(b"bwrap")}
    return {pid for pid in boot if parents[pid] in boot and is_live(pid)}


async def one_parked_child(scratch: Path | None = None, *, other_than: frozenset[int] = frozenset()) -> set[int]:
    """The one child its zygotes forked ahead (forked_children) once there is exactly one, not one of ``other_than``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = forked_children(scratch)
        if len(children) == 1 and not children & other_than:
            return children
        await asyncio.sleep(0.05)
    raise AssertionError(f"no single parked child besides {other_than}: {forked_children(scratch)}")
