"""The real daemon's shutdown (SIGTERM) kills every sandbox process it started: parked and starting
warm-pool workers included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sbx_helpers import SANDBOX_USER, is_live

from pod_agent.sandbox.cgroup import descendants

_POD_AGENT = str(Path(sys.executable).parent / "pod-agent")


def _sandbox_processes(pids: list[int]) -> list[int]:
    uid = int(subprocess.run(["id", "-u", SANDBOX_USER], check=True, capture_output=True, text=True).stdout)
    owned = []
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                owned.append(pid)
        except OSError:
            continue
    return owned


def test_sigterm_leaves_no_sandbox_process_behind(
    tmp_path: Path, hub_process_url: str, small_pod_config: Callable[..., Path]
) -> None:
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([_POD_AGENT, "run", "--config", str(small_pod_config(
            "shutdown", hub_process_url, security=f'sandbox = "strict"\nsandbox_user = "{SANDBOX_USER}"\n',
            limits="warm_worker = true\nwarm_pool = 2\n",
        ))],
                                 stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        tree: list[int] = []
        # A warm worker's tree (bwrap's monitor, its init, the bootstrap) is up, importing torch.
        while len(_sandbox_processes(tree)) < 3:
            assert time.monotonic() < deadline and agent.poll() is None, log.read_text()
            time.sleep(0.1)
            tree = descendants(agent.pid)
        tree = descendants(agent.pid)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    assert [pid for pid in tree if pid != agent.pid and is_live(pid)] == []
