"""Constants and helpers shared by the sandbox tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
from pod_agent.sandbox import SandboxJob, SandboxOutcome, SandboxRunner

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


async def run_corpus(runner: SandboxRunner, tmp_path: Path, model: str, comm: str, **extra: Any) -> SandboxOutcome:
    """Run corpus/<model>.py on ``runner``; ``comm`` names its processes, ``extra`` joins the request."""
    case = tmp_path / uuid.uuid4().hex[:8]
    (case / "input").mkdir(parents=True)
    (case / "input" / "model.py").write_text((CORPUS / f"{model}.py").read_text())
    return await runner.run(SandboxJob(entry=ENTRY, input_dir=case / "input", work_dir=case / "work",
                                       request={"comm": comm, **extra}, entry_path=ENTRY_PATH))
