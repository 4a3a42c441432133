"""Helpers for the end-to-end tests: a hub process, agent processes, the modeller CLI, a fault proxy.

Everything here talks to loopback only. Heartbeats and backoff are short so faults
heal in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pod_agent.modeller import ModellerClient
from pod_agent.protocol import IdentityKey, PublicKey

POD_AGENT = str(Path(sys.executable).parent / "pod-agent")
START_TIMEOUT_S = 20.0

SMALL_CSV = "age,income,city,label\n" + "".join(
    f"{20 + i % 50},{1000.5 + i * 3},{['north', 'south', 'east'][i % 3]},{'yes' if i % 4 == 0 else 'no'}\n"
    for i in range(120)
) + ",,west,no\n"


def wait_for(check: Callable[[], Any], *, timeout_s: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def async_wait_for(check: Callable[[], Any], *, timeout_s: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class HubProcess:
    """``pod-agent hub serve`` as a child process; restartable on the same port and database (an SQLite file,
    or a postgresql:// URL with ``extra`` naming the shared --blob-dir)."""

    db: Path | str
    log: Path
    cert: Path | None = None
    key: Path | None = None
    port: int = 0
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    def start(self) -> HubProcess:
        argv = [POD_AGENT, "hub", "serve", "--db", str(self.db), "--port", str(self.port), *self.extra]
        if self.cert and self.key:
            argv += ["--cert", str(self.cert), "--key", str(self.key)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "hub listening on" not in line:
            raise AssertionError(f"hub did not start: {line!r}; see {self.log}: {self.log.read_text()[-2000:]}")
        self.url = line.split("hub listening on", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.db, timeout=5)) as db:
            rows = db.execute(sql, params).fetchall()
            db.commit()
            return rows

    def results(self, task_id: str) -> list[tuple[Any, ...]]:
        return self.query("SELECT pod, envelope FROM results WHERE task_id = ?", (task_id,))


@dataclass
class Modeller:
    key: IdentityKey
    key_path: Path
    hub_url: str
    extra: list[str] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = [POD_AGENT, "modeller", "--hub", self.hub_url, "--key", str(self.key_path), *self.extra, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        if check and done.returncode != 0:
            raise AssertionError(f"{args} failed ({done.returncode}): {done.stderr}")
        return done


@dataclass
class AgentProcess:
    """``pod-agent run --config`` as a child process."""

    name: str
    config: Path
    state_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([POD_AGENT, "run", "--config", str(self.config)], stdout=log, stderr=log)
        return self

    def state(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.state_dir / "state.sqlite", timeout=5)) as db:
            return db.execute(sql, params).fetchall()

    def task_status(self, task_id: str) -> str | None:
        rows = self.state("SELECT status FROM tasks WHERE task_id = ?", (task_id,))
        return str(rows[0][0]) if rows else None

    def terminate(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    """A hub, a modeller key registered with it, and a factory for pods."""

    tmp: Path
    hub: HubProcess
    modeller: Modeller
    agents: list[AgentProcess] = field(default_factory=list)

    def add_pod(
        self, name: str, data: Path, *, hub_url: str | None = None, hub_extra: str = "", start: bool = True,
        grace_s: float = 5.0, request_timeout_s: float = 3.0, sandbox: str = "none", key: IdentityKey | None = None,
        peers: Mapping[str, PublicKey] | None = None,
    ) -> AgentProcess:
        """``key`` is the pod's identity (fresh when None); ``peers`` (name -> identity key) are pinned in
        ``[[privacy.peers]]`` as their owners would exchange `pod-agent keys show` lines."""
        state_dir = self.tmp / name
        state_dir.mkdir(parents=True, exist_ok=True)
        (key or IdentityKey.generate()).save(state_dir / "identity.pem")
        pins = "".join(
            f'\n[[privacy.peers]]\nname = "{peer}"\npublic_key = "{public.to_b64()}"\n'
            for peer, public in sorted((peers or {}).items()) if peer != name
        )
        config = state_dir / "pod.toml"
        config.write_text(
            f"""
[pod]
name = "{name}"
state_dir = "{state_dir}"

[hub]
url = "{hub_url or self.hub.url}"
heartbeat_s = 0.5
backoff_initial_s = 0.05
backoff_cap_s = 0.5
request_timeout_s = {request_timeout_s}
{hub_extra}

[datasource]
path = "{data}"

[security]
sandbox = "{sandbox}"

[[security.modellers]]
name = "tester"
public_key = "{self.modeller.key.public.to_b64()}"
role = "super"
kinds = ["train", "evaluate"]

[sandbox_limits]
warm_worker = false

[privacy]
min_rows = 20

[training]
shutdown_grace_s = {grace_s}

[ops]
health_port = 0
{pins}"""
        )
        agent = AgentProcess(name, config, state_dir, self.tmp / f"{name}.log")
        self.agents.append(agent)
        return agent.start() if start else agent

    def online(self, *names: str) -> bool:
        rows = dict(self.hub.query("SELECT name, last_seen FROM pods"))
        return all(n in rows and rows[n] >= int(time.time()) - 2 for n in names)


async def register_modeller(modeller: Modeller) -> None:
    async with ModellerClient(modeller.hub_url, modeller.key) as client:
        await client.register("tester")


def start_cluster_at(tmp_path: Path, **hub_kwargs: Any) -> Cluster:
    hub = HubProcess(db=tmp_path / "hub.sqlite", log=tmp_path / "hub.log", **hub_kwargs).start()
    key = IdentityKey.generate()
    key_path = tmp_path / "modeller.pem"
    key.save(key_path)
    return Cluster(tmp_path, hub, Modeller(key, key_path, hub.url))


# Empty sweeps in a row that FaultProxy.close() needs before it trusts that no handler is still starting.
CLOSE_QUIET_ROUNDS = 3


class FaultProxy:
    """TCP proxy on 127.0.0.1 in front of the hub that can fail on purpose.

    Modes: ``pass``; ``http500`` (answer every new request with a 500 and close);
    ``reset`` (abort every new connection); ``swallow_results`` (forward a result
    upload to the hub but never return the hub's answer); ``stall_results`` (hold a
    result upload without forwarding it). Every mode change drops the connections
    already open, so the WebSocket and any held upload break too.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.port = 0
        self.swallowed = 0
        self.stalled = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        """Stop listening, abort every connection and wait for the handlers, so no socket outlives the test."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        # A connection accepted just before close() gets its handler some loop iterations later,
        # and that handler opens an upstream socket: sweep until a few quiet rounds find none.
        quiet = 0
        while quiet < CLOSE_QUIET_ROUNDS:
            await asyncio.sleep(0.01)
            if not (self._handlers or self._writers):
                quiet += 1
                continue
            quiet = 0
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            writer.transport.abort()
            return
        if self.mode == "http500":
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.read(65536)
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        swallow, stall = asyncio.Event(), asyncio.Event()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upward: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while chunk := await src.read(65536):
                    if upward and b"POST /v1/pod/results" in chunk:
                        if self.mode == "swallow_results":
                            swallow.set()
                            self.swallowed += 1
                        elif self.mode == "stall_results":
                            stall.set()
                            self.stalled += 1
                    if (not upward and swallow.is_set()) or (upward and stall.is_set()):
                        continue
                    dst.write(chunk)
                    await dst.drain()
            if not swallow.is_set():
                dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer, upward=True), pump(up_reader, writer, upward=False))
        finally:
            self._writers.discard(up_writer)
            up_writer.transport.abort()
