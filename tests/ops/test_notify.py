"""sd_notify: a real process reports READY, WATCHDOG and STOPPING to a socket the test owns."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pod_agent.ops import Notifier

# Runs in a child process: what the daemon does around its lifetime, with the real notifier.
_CHILD = """
import asyncio
from pod_agent.ops import Notifier

async def main():
    notifier = Notifier.from_env(unset_environment=True)
    notifier.ready("registered; waiting for tasks")
    pinger = asyncio.create_task(notifier.watchdog_loop())
    await asyncio.sleep(0.45)
    pinger.cancel()
    notifier.stopping("shutting down")

asyncio.run(main())
"""


def _receive_all(sock: socket.socket) -> list[str]:
    messages = []
    sock.settimeout(0.2)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            return messages


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield str(path), sock


def _run_child(notify_socket: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    child_env.update(NOTIFY_SOCKET=notify_socket, **env)
    return subprocess.run([sys.executable, "-c", _CHILD], env=child_env, capture_output=True, text=True, timeout=60)


def test_process_sends_ready_watchdog_and_stopping_in_order(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    # 200 ms watchdog -> a ping every 100 ms, so ~4 pings in the child's 0.45 s.
    done = _run_child(address, WATCHDOG_USEC="200000")
    assert done.returncode == 0, done.stderr
    messages = _receive_all(sock)
    assert messages[0] == "READY=1\nSTATUS=registered; waiting for tasks"
    assert messages[-1] == "STOPPING=1\nSTATUS=shutting down"
    assert 3 <= messages.count("WATCHDOG=1") <= 6
    assert set(messages[1:-1]) == {"WATCHDOG=1"}


def test_abstract_socket_name_with_at_sign_is_reached() -> None:
    name = f"pod-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        done = _run_child("@" + name, WATCHDOG_USEC="200000")
        assert done.returncode == 0, done.stderr
        messages = _receive_all(sock)
    assert messages[0].startswith("READY=1") and messages[-1].startswith("STOPPING=1")
    assert "WATCHDOG=1" in messages


def test_watchdog_for_another_pid_is_not_armed(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    done = _run_child(address, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    assert done.returncode == 0, done.stderr
    messages = _receive_all(sock)
    assert "WATCHDOG=1" not in messages
    assert messages[0].startswith("READY=1")


def test_watchdog_interval_is_half_the_timeout() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval_s == 15.0


def test_without_notify_socket_every_call_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_vanished_socket_is_logged_once_and_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Notifier(str(tmp_path / "gone.sock")) as notifier:
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1


def test_status_is_one_short_line(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    with Notifier(address) as notifier:
        notifier.status("training\ntask 1\t" + "x" * 500)
    (message,) = _receive_all(sock)
    assert message.startswith("STATUS=training task 1 x")
    assert "\n" not in message and len(message) == len("STATUS=") + 200


# -- the real daemon ----------------------------------------------------------------------

_POD_AGENT = str(Path(sys.executable).parent / "pod-agent")


def _receive_until(sock: socket.socket, wanted: str, *, timeout_s: float, seen: list[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(line == wanted for message in seen for line in message.split("\n")):
            return
    raise AssertionError(f"no {wanted} within {timeout_s} s; received {seen}")


def test_pod_agent_run_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, hub_process_url: str, path_socket: tuple[str, socket.socket],
    small_pod_config: Callable[..., Path],
) -> None:
    address, sock = path_socket
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    # A 1 s watchdog: the daemon must ping every 0.5 s from its event loop.
    env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000")
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([_POD_AGENT, "run", "--config", str(small_pod_config(
            "notified", hub_process_url, hub="heartbeat_s = 0.5\n", security='sandbox = "none"\n',
            limits="warm_worker = false\n",
        ))],
                                 env=env, stdout=out, stderr=out)
    seen: list[str] = []
    try:
        _receive_until(sock, "READY=1", timeout_s=30, seen=seen)
        ready = next(m for m in seen if "READY=1" in m.split("\n"))
        assert "STATUS=registered as notified" in ready.split("\n")
        # Two pings in a row: the loop keeps pinging, not just once at start.
        for _ in range(2):
            pings: list[str] = []
            _receive_until(sock, "WATCHDOG=1", timeout_s=5, seen=pings)
            seen += pings
        agent.send_signal(signal.SIGTERM)
        _receive_until(sock, "STOPPING=1", timeout_s=30, seen=seen)
        assert agent.wait(30) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    messages = [line for m in seen for line in m.split("\n")]
    assert messages.index("READY=1") < messages.index("STOPPING=1")
