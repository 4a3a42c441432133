"""Sandbox fixtures: the sandbox user, canaries and listeners outside scratch, and a model runner.

Everything runs through the real SandboxRunner. At level strict a missing layer
raises SandboxUnavailable and fails the test: strict is never skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sbx_helpers import ATTACK_LIMITS, CORPUS, ENTRY, ENTRY_PATH, HERE, SANDBOX_USER, SECRET, Outside, RunModel

from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
from pod_agent.sandbox import SandboxJob, SandboxOutcome, SandboxRunner


@pytest.fixture(scope="session", autouse=True)
def sandbox_user() -> str:
    subprocess.run([sys.executable, str(HERE / "ensure_sandbox_user.py"), SANDBOX_USER], check=True)
    return SANDBOX_USER


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch root of this test's own, which the sandbox uid can reach (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="pod-agent-sbx-test-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["fork_server", "warm_pool"])
def worker_path(request: pytest.FixtureRequest) -> str:
    """Which way a corpus task reaches its worker: a fork-server child, or a warm pool's worker."""
    return str(request.param)


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    # Under /tmp with 0755 dirs, so file permissions alone would let the sandbox uid read the 0644 canary.
    root = Path(f"/tmp/pod-agent-outside-{uuid.uuid4().hex[:8]}")
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    c644, c600, key, data = root / "canary_644.txt", root / "canary_600.txt", root / "identity.pem", root / "data.csv"
    for path, mode in ((c644, 0o644), (c600, 0o600), (key, 0o600), (data, 0o644)):
        path.write_text(SECRET + "\n")
        os.chmod(path, mode)
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    unix_path = root / "agent.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    os.chmod(unix_path, 0o777)
    unix.listen()
    unix.setblocking(False)
    abstract_name = f"pod-agent-test-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    abstract.setblocking(False)
    comm = "sbx" + uuid.uuid4().hex[:12]
    yield Outside(root, c644, c600, key, data, tcp, udp, unix_path, unix, abstract_name, abstract, comm)
    for sock in (tcp, udp, unix, abstract):
        sock.close()
    subprocess.run(["rm", "-rf", str(root)], check=True)


@pytest.fixture
def run_model(tmp_path: Path, outside: Outside, worker_path: str) -> RunModel:
    """Run corpus/<name>.py through the real runner: ``await run_model("tcp_connect", level="strict")``,
    once as a fork-server child and once on a worker from the warm pool (``worker_path``), or on a
    worker started cold with ``warm_worker=False``."""

    async def run(name: str, *, level: str = "strict", request: dict[str, Any] | None = None,
                  unsafe_disable_layers: frozenset[str] = frozenset(), stderr_path: Path | None = None,
                  **limits: Any) -> SandboxOutcome:
        case = tmp_path / uuid.uuid4().hex[:8]
        (case / "input").mkdir(parents=True)
        (case / "input" / "model.py").write_text((CORPUS / f"{name}.py").read_text())
        merged = {**ATTACK_LIMITS, **limits}
        full_request = {**outside.request(), "host_input": str(case / "input" / "model.py"),
                        "memory_mb": merged["memory_mb"], "max_file_mb": merged["max_file_mb"], **(request or {})}
        runner = SandboxRunner(SecuritySection(sandbox=level, sandbox_user=SANDBOX_USER),
                               SandboxLimitsSection(**merged), unsafe_disable_layers=unsafe_disable_layers,
                               fork_server=worker_path == "fork_server")
        async with runner:
            # Strict on this host (and CI) runs forks; without a layer forks need, the pool serves both runs.
            if worker_path == "fork_server" and level == "strict" and not unsafe_disable_layers:
                assert runner.forks
            if worker_path == "fork_server" and not runner.forks and merged["warm_worker"]:
                pytest.skip("no fork server at this level or with these layers: the warm_pool run covers it")
            if merged["warm_worker"]:
                await runner.prewarm(ENTRY, entry_path=ENTRY_PATH)
            return await runner.run(SandboxJob(entry=ENTRY, input_dir=case / "input", work_dir=case / "work",
                                               request=full_request, entry_path=ENTRY_PATH,
                                               stderr_path=stderr_path))

    return run
