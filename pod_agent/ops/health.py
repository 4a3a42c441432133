"""Local health, readiness and metrics endpoint of the agent (aiohttp, 127.0.0.1 by default).

Owns three read-only routes and nothing else (no control endpoints, so no
authentication to get wrong):
  /healthz  200 while the process runs and its event loop keeps up; 503 for
            ``STALL_MEMORY_S`` after the loop lagged more than ``LOOP_LAG_LIMIT_S``
            (while it is stalled, the request itself times out). It names the pod (public
            already: the hub lists it), so ``pod-agent check`` can tell its own running
            agent on the port from anything else (``pod_on_health_port``)
  /readyz   200 once registered with the hub, connected to it, and the sandbox
            level in force satisfies the configured one; else 503 listing what is missing
  /metrics  Prometheus text of the agent's own registry (metrics.py)
The daemon owns a ``Readiness`` and updates its fields; this module only reads it.
``bind_health_socket`` turns a taken port into a ``HealthPortTaken`` naming the setting (``pod-agent run``
says so in one line, and ``pod-agent check`` tests the port with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import socket
import time
from dataclasses import dataclass

from aiohttp import web

from pod_agent.errors import ConfigError
from pod_agent.ops.metrics import METRICS_CONTENT_TYPE, AgentMetrics

# Sandbox levels from weakest to strongest; a stronger level satisfies a weaker requirement.
SANDBOX_LEVEL_ORDER: tuple[str, ...] = ("none", "standard", "strict")
# How often the loop-lag probe wakes, and the lag past which /healthz reports the loop stuck.
LOOP_PROBE_INTERVAL_S = 1.0
LOOP_LAG_LIMIT_S = 5.0
# A stall is reported this long after it ended, so a prober polling every 30 s sees it.
STALL_MEMORY_S = 60.0
# `pod-agent check` asks a taken port who holds it: a /healthz reply is a few dozen bytes, and an
# agent that does not answer this fast is reported as a taken port like any other holder.
_PROBE_TIMEOUT_S = 2.0
_MAX_PROBE_BYTES = 4096


class HealthPortTaken(ConfigError):
    """The health endpoint's port is held by another socket (another agent, or anything else)."""


def bind_health_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port for the endpoint; ConfigError naming the setting when it cannot be had
    (a second pod on this host is the usual cause). ``pod-agent check`` binds and closes one to test the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        taken = exc.errno == errno.EADDRINUSE
        why = "is taken (another pod-agent on this host?)" if taken else f"cannot be bound: {exc.strerror or exc}"
        error = HealthPortTaken if taken else ConfigError
        raise error(
            f"health endpoint {host}:{port} {why}: set ops.health_port in pod.toml to a free port "
            "(each pod on a host needs its own), or to 0 to turn the endpoint off"
        ) from exc


def pod_on_health_port(host: str, port: int) -> str | None:
    """The pod a pod-agent serving /healthz on host:port names, or None when whatever holds the port does not
    answer as one (refused, slow, oversized, not JSON, no pod name)."""
    connection = http.client.HTTPConnection(host, port, timeout=_PROBE_TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        raw = connection.getresponse().read(_MAX_PROBE_BYTES + 1)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    try:
        body = json.loads(raw) if len(raw) <= _MAX_PROBE_BYTES else None
    except ValueError:
        return None
    pod = body.get("pod") if isinstance(body, dict) else None
    return pod if isinstance(pod, str) else None


@dataclass
class Readiness:
    """What /readyz reports; the daemon sets the fields as its state changes."""

    sandbox_required: str = "strict"
    sandbox_level: str | None = None
    registered: bool = False
    hub_connected: bool = False

    def missing(self) -> list[str]:
        """Why the agent is not ready, in words; empty when it is."""
        reasons = []
        if not self.registered:
            reasons.append("not registered with the hub")
        if not self.hub_connected:
            reasons.append("hub not connected")
        if not self.sandbox_satisfied():
            reasons.append(f"sandbox level {self.sandbox_level or 'unprobed'} below required {self.sandbox_required}")
        return reasons

    def sandbox_satisfied(self) -> bool:
        if self.sandbox_level not in SANDBOX_LEVEL_ORDER or self.sandbox_required not in SANDBOX_LEVEL_ORDER:
            return False
        return SANDBOX_LEVEL_ORDER.index(self.sandbox_level) >= SANDBOX_LEVEL_ORDER.index(self.sandbox_required)


class HealthServer:
    """Serves /healthz, /readyz and /metrics; ``async with`` starts and stops it.

    ``port=0`` binds a free port (read it from ``.port`` after start).
    """

    def __init__(
        self,
        *,
        metrics: AgentMetrics,
        readiness: Readiness,
        host: str = "127.0.0.1",
        port: int = 8701,
        pod: str | None = None,
    ) -> None:
        self.metrics, self.readiness, self.pod = metrics, readiness, pod
        self.host, self._requested_port = host, port
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None
        self._lag_s = 0.0
        self._stalled_until = 0.0

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.create_app(), access_log=None)
        await self._runner.setup()
        # Binding the socket here (not via TCPSite) lets port=0 report the port it got.
        try:
            sock = bind_health_socket(self.host, self._requested_port)
        except ConfigError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self._probe = asyncio.create_task(self._probe_loop(), name="health-loop-probe")

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _probe_loop(self) -> None:
        # The loop's lag is how late a sleep wakes up: a blocking call in the daemon shows here.
        while True:
            before = time.monotonic()
            await asyncio.sleep(LOOP_PROBE_INTERVAL_S)
            now = time.monotonic()
            self._lag_s = max(0.0, now - before - LOOP_PROBE_INTERVAL_S)
            self.metrics.set_loop_lag(self._lag_s)
            if self._lag_s > LOOP_LAG_LIMIT_S:
                self._stalled_until = now + STALL_MEMORY_S

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = time.monotonic() >= self._stalled_until
        body: dict[str, object] = {"status": "ok" if ok else "loop stalled", "loop_lag_s": round(self._lag_s, 4)}
        if self.pod is not None:
            body["pod"] = self.pod
        return web.json_response(body, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        missing = self.readiness.missing()
        body = {
            "ready": not missing,
            "missing": missing,
            "sandbox_level": self.readiness.sandbox_level,
            "sandbox_required": self.readiness.sandbox_required,
        }
        return web.json_response(body, status=503 if missing else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response


__all__ = [
    "LOOP_LAG_LIMIT_S",
    "SANDBOX_LEVEL_ORDER",
    "STALL_MEMORY_S",
    "HealthPortTaken",
    "HealthServer",
    "Readiness",
    "pod_on_health_port",
]
