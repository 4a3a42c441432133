"""Benchmark: two hub processes on one PostgreSQL, one SIGKILLed around a fan-out to N simulated pods.

How pods find the other process: the way an operator configures a real pod, ``hub.url`` its own process and
``hub.fallback_urls`` the other. Each simulated pod is the agent's own ``HubClient`` (which moves to the next
URL when a call finds its hub unavailable) with the agent's ``Backoff`` at the agent's defaults, and its link
loop is the daemon's own ``HubLink``: register, open the signed task WebSocket, heartbeat; on any retryable
failure wait a backoff step and open the socket again (at the next URL when the socket ended), registering anew
only when the hub refuses it. Each pushed task is verified and acknowledged on the socket, as the daemon's intake
does, with the pipeline left out. Its sockets are the agent's own ``hold_task_sockets``: with the agent's default
``hub.standby_socket`` each pod also holds a standby socket at the other process, and when its process dies it
promotes that one (one frame, no handshake) instead of opening a new one; ``--standby off`` runs without
(``both``: each run with, then without). No TCP front is put before the hubs: it would be a third process that
can die, and the agent needs none.

Half the pods live on each process (worker processes of PODS_PER_WORKER pods, niced as in hub_load); the task
(an evaluate task for every pod, its cohort committed by a Merkle root) is submitted to the first process.
Variants:

- ``during``: the second process is SIGKILLed as soon as one of its pods holds the task: it is in the middle
  of its fan-out (woken by LISTEN/NOTIFY); the first process pushes to its own pods, and the killed
  process's pods reconnect to it and read the task from storage.
- ``submitter``: the same, but the process killed is the first, which took the submission (and never answers
  it): the second pushes to its pods, and the first's pods reconnect to the second.
- ``before``: the second process is SIGKILLed just before the task is submitted to the first: its pods are
  between their sockets' end and their reconnection while the task goes out.
- ``after``: the second process is SIGKILLed, and the task is submitted to the first once every pod of the
  killed process has its socket open there: the federation's next fan-out, all pods on the survivor.

Then every pod posts a small signed result (through the process its client points at by then) and the
modeller reads the task's results back. Measured: pods that never got the task (lost), pods that got it more
than once (on one connection: a hub bug; again after reconnecting: an ack the dead process took with it, which
the agent's state ignores), fan-out latency from the submission (p50/p99/max) for all pods, the survivor's
pods and the pods that had to reconnect, and for those their reconnection (kill to task socket open on the
survivor, or its standby promoted there) with its parts: time slept in backoff, the re-registration and the
socket's signed handshake (none for a promoted standby); from the kill until every pod holds the task, the CPU
time of the survivor, the simulated pods, PostgreSQL and the whole host (busy, and all its cores' time: when the two
are equal the window is CPU-bound); the hubs' RSS with every pod connected; results stored against N.

    python -m bench.hub_failover [--pods N ...] [--variant during|submitter|before|after] [--standby on|off|both]
                                 [--db URL] [--small] [--json]
        (--small: 50 pods, variants submitter and before; default 1000 4000, every variant;
        needs PostgreSQL: --db or $POD_AGENT_TEST_POSTGRES)

A SIGKILLed process's sockets are closed by the kernel, so its pods see the end at once; a hub host that
loses power or its network leaves them waiting up to DEAD_AFTER_HEARTBEATS heartbeats (45 s by default).

HUB_FAILOVER_PROFILE=FILE samples the surviving process with py-spy, which must be on PATH, from the kill until
every pod holds the task, and writes its folded stacks there.

Goal (issue 21): no task or result lost, and fan-out p99 < 2 s over all pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench.cli import parser_for, show
from bench.hub_db import POSTGRES_ENV, postgres_schema
from bench.hub_load import (
    FANOUT_TIMEOUT_S,
    GOAL_FANOUT_P99_S,
    HEARTBEAT_S,
    POD_NICENESS,
    PODS_PER_WORKER,
    _cpu_s,
    _payload,
    _percentile,
    _py_spy,
    _registration,
    _rss_mb,
    _start_hub,
    _submit,
)
from pod_agent.agent import Backoff, HubClient
from pod_agent.agent.backoff import RETRYABLE
from pod_agent.agent.hubclient import TaskStream
from pod_agent.agent.hublink import HubLink
from pod_agent.config import HubSection
from pod_agent.errors import PodAgentError
from pod_agent.protocol import (
    HubPush,
    IdentityKey,
    PodRegisteredStanding,
    PodRegistration,
    PublicKey,
    ResultPayload,
    TaskDelivery,
    check_inclusion,
    envelope_bytes,
    sign_envelope,
)

FULL_SIZES = (1000, 4000)
SMALL_SIZE = 50
VARIANTS = ("during", "submitter", "before", "after")
SMALL_VARIANTS = ("submitter", "before")  # the smoke run's: "during" kills as "submitter" does
# After every pod holds the task: time for a redelivery to a pod whose ack died with the killed process.
SETTLE_S = 1.0
# Results posted at once per worker (as hub_load's registrations): the pods of one host-less worker would
# otherwise open hundreds of connections in the same millisecond, which no fleet does.
POST_CONCURRENCY = 64
_AGENT_HUB = HubSection()  # the agent's defaults: backoff_initial_s, backoff_cap_s


# -- the simulated pods (worker processes) --------------------------------------------------------


@dataclass
class _Session:
    opened: float  # when the task socket was open
    base: str
    register_s: float
    handshake_s: float
    promoted: bool  # a standby that became the task socket: no registration or handshake of its own


@dataclass
class _Pod:
    name: str
    key: IdentityKey
    sessions: list[_Session] = field(default_factory=list)
    deliveries: list[tuple[float, int]] = field(default_factory=list)  # (when, index of the session it came on)
    failures: list[float] = field(default_factory=list)  # when a try (or an open link) failed
    task_id: str = ""
    posted_s: float | None = None
    standbys: int = 0  # standby sockets opened


class _TimedHub(HubClient):
    """The agent's ``HubClient``, timing its registrations and task sockets' handshakes for the figures."""

    def __init__(self, section: HubSection, key: IdentityKey) -> None:
        super().__init__(section, key)
        self.register_s = 0.0  # the registration since the last session, if any
        self.handshake_s: float | None = None  # the task socket opened last, until its session is counted

    async def register(self, registration: PodRegistration) -> PodRegisteredStanding:
        started = time.time()
        standing = await super().register(registration)
        self.register_s = time.time() - started
        return standing

    async def task_stream(self, *, heartbeat_s: float) -> TaskStream:
        started = time.time()
        stream = await super().task_stream(heartbeat_s=heartbeat_s)
        self.handshake_s = time.time() - started
        return stream


@dataclass
class _TimedBackoff(Backoff):
    """The agent's ``Backoff``, keeping (when it started, seconds slept) of each wait."""

    slept: list[tuple[float, float]] = field(default_factory=list)

    async def wait(self, stop: asyncio.Event, *, elsewhere: bool = False) -> None:
        started = time.time()
        await super().wait(stop, elsewhere=elsewhere)
        self.slept.append((started, time.time() - started))


@dataclass
class _PodListener:
    """What a simulated pod's ``HubLink`` tells it (``LinkListener``): its sessions and failures are kept,
    each delivery verified (its inclusion proof; the envelope's signature once per worker) and acknowledged
    on the socket, as the daemon's intake would, with the pipeline left out. ``delivered(pod, task_id)`` on
    each delivery, ``opened(pod)`` each time a socket becomes the task socket or a standby opens."""

    pod: _Pod
    hub: _TimedHub
    modeller: PublicKey
    delivered: Callable[[_Pod, str], None]
    opened: Callable[[_Pod], None]

    def admitted(self) -> None:
        pass

    def connected(self, base: str) -> None:
        handshake_s, self.hub.handshake_s = self.hub.handshake_s, None
        register_s, self.hub.register_s = self.hub.register_s, 0.0
        promoted = handshake_s is None  # a standby that became the task socket: no handshake of its own
        self.pod.sessions.append(_Session(time.time(), base, register_s, handshake_s or 0.0, promoted))
        self.opened(self.pod)

    def down(self, exc: BaseException) -> None:
        self.pod.failures.append(time.time())
        self.hub.register_s = 0.0

    def standby(self, stream: TaskStream) -> None:
        self.pod.standbys += 1
        self.opened(self.pod)

    async def push(self, push: HubPush) -> None:
        if isinstance(push, TaskDelivery):
            check_inclusion(_payload(push, self.modeller).cohort, push.proof)
            self.pod.deliveries.append((time.time(), len(self.pod.sessions) - 1))
            self.pod.task_id = push.task_id
            self.delivered(self.pod, push.task_id)
            await self.hub.ack(push.task_id)


async def _post(pod: _Pod, hub: HubClient, stop: asyncio.Event, gate: asyncio.Semaphore) -> None:
    """The pod's signed result, retried through backoff as the agent's outbox does."""
    result = ResultPayload(task_id=pod.task_id, pod=pod.name, kind="evaluate", status="done", metrics={"loss": 0.5},
                           n_rows=1000, produced_at=int(time.time()))
    body = envelope_bytes(sign_envelope(result, pod.key))
    backoff = Backoff(_AGENT_HUB.backoff_initial_s, _AGENT_HUB.backoff_cap_s)
    async with gate:
        started = time.time()
        while not stop.is_set():
            try:
                await hub.upload_result(body)
                pod.posted_s = time.time() - started
                return
            except RETRYABLE:
                await backoff.wait(stop)


def _worker(home: str, other: str, names: list[str], conn: Connection, modeller: str, standby: bool) -> None:
    os.nice(POD_NICENESS)
    # Each moved pod's client logs its move to the next URL: thousands of lines that say what the figures count.
    logging.getLogger("pod_agent").setLevel(logging.ERROR)
    asyncio.run(_worker_main(home, other, names, conn, PublicKey.from_b64(modeller), standby))


async def _worker_main(
    home: str, other: str, names: list[str], conn: Connection, modeller: PublicKey, standby: bool
) -> None:
    """Connect the pods; tell the harness when the first and when every pod holds the task; post results when
    told; report everything when told to stop."""
    section = HubSection(url=home, fallback_urls=[other], heartbeat_s=HEARTBEAT_S, standby_socket=standby)
    pods = [_Pod(n, IdentityKey.generate()) for n in names]
    stop = asyncio.Event()
    holding = 0  # pods that hold the task
    moved: set[str] = set()  # pods with a socket open at the other process

    def delivered(pod: _Pod, task_id: str) -> None:
        # Said at once (the harness kills a process on the first delivery), and counted here rather than by a
        # loop over the pods: a daemon has no such loop, and its turns cost these pods' loop CPU in the fan-out.
        nonlocal holding
        if len(pod.deliveries) > 1:
            return
        holding += 1
        if holding == 1:
            conn.send({"first": task_id})
        if holding == len(pods):
            conn.send({"all": True})

    def opened(pod: _Pod) -> None:
        if pod.name not in moved and pod.sessions and pod.sessions[-1].base != pod.sessions[0].base:
            moved.add(pod.name)
            if len(moved) == len(pods):
                conn.send({"moved": True})

    async with contextlib.AsyncExitStack() as stack:
        hubs = [_TimedHub(section, p.key) for p in pods]
        for hub in hubs:
            await stack.enter_async_context(hub)
        links, backoffs = [], []
        for pod, hub in zip(pods, hubs, strict=True):
            listener = _PodListener(pod, hub, modeller, delivered, opened)
            backoffs.append(_TimedBackoff(section.backoff_initial_s, section.backoff_cap_s))
            pod_link = HubLink(
                hub, section, registration=functools.partial(_registration, pod.name, pod.key), listener=listener,
                stop=stop, backoff=backoffs[-1], on_standby=listener.standby,
                # Spread as a fleet's pods that started at different times (these all start within a second).
                first_beat_s=HEARTBEAT_S * (hash(pod.name) % 1000) / 1000,
            )
            links.append(asyncio.create_task(pod_link.run()))
            await asyncio.sleep(0.002)  # 500 registrations a second per worker, not all in one instant
        while not all(p.sessions and (p.standbys or not standby) for p in pods):
            await asyncio.sleep(0.05)
        conn.send({"ready": [(p.name, p.key.key_id) for p in pods]})
        # The harness's commands read as the pipe becomes readable, not polled for.
        commands: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        while await commands.get() != "stop":
            gate = asyncio.Semaphore(POST_CONCURRENCY)
            await asyncio.gather(*(_post(p, h, stop, gate) for p, h in zip(pods, hubs, strict=True)))
            conn.send({"posted": True})
        loop.remove_reader(conn.fileno())
        stop.set()
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)
    conn.send({"pods": [
        {"name": p.name,
         "sessions": [(s.opened, s.base, s.register_s, s.handshake_s, s.promoted) for s in p.sessions],
         "deliveries": p.deliveries, "failures": p.failures, "backoff": b.slept, "posted_s": p.posted_s}
        for p, b in zip(pods, backoffs, strict=True)
    ]})


# -- the run ------------------------------------------------------------------------------------


class _Workers:
    """The worker processes and what each has said so far."""

    def __init__(self) -> None:
        self.procs: list[tuple[BaseProcess, Connection, int]] = []  # (process, pipe, its home hub's index)
        self.said: dict[int, dict[str, Any]] = {}

    def start(self, home: str, other: str, names: list[str], hub: int, modeller: PublicKey, standby: bool) -> None:
        spawn = multiprocessing.get_context("spawn")
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=_worker, args=(home, other, names, child, modeller.to_b64(), standby))
        proc.start()
        self.said[len(self.procs)] = {}
        self.procs.append((proc, parent, hub))

    def until(self, word: str, deadline: float, *, hub: int | None = None, some: bool = False) -> bool:
        """Read what the workers (of ``hub``, else all) say until each (or ``some`` one) has said ``word``, or
        the deadline; whether they did."""
        chosen = {i: c for i, (_, c, h) in enumerate(self.procs) if hub in (None, h)}

        def done() -> bool:
            said = [word in self.said[i] for i in chosen]
            return any(said) if some else all(said)

        while not done():
            left = deadline - time.time()
            if left <= 0:
                return False
            ready = wait([c for i, c in chosen.items() if word not in self.said[i]], left)
            for index, conn in chosen.items():
                if conn in ready:
                    self.said[index].update(conn.recv())
        return True

    def tell(self, command: str) -> None:
        for _, conn, _ in self.procs:
            conn.send(command)

    def cpu_s(self) -> float:
        return sum(_cpu_s(proc.pid) for proc, _, _ in self.procs if proc.pid is not None)

    def close(self) -> None:
        for proc, _, _ in self.procs:
            if proc.is_alive():
                proc.terminate()


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(values), "p50": round(_percentile(values, 0.5), 3), "p99": round(_percentile(values, 0.99), 3),
            "max": round(max(values), 3)}


def run_once(n: int, variant: str, server: str, *, standby: bool = True) -> dict[str, Any]:
    """One failover: two processes, n pods split across them (each holding a standby socket at the other
    process with ``standby``, the agent's default), one process killed as ``variant`` says."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = os.getloadavg()
    victim = 0 if variant == "submitter" else 1  # the first process takes the submission
    profile = os.environ.get("HUB_FAILOVER_PROFILE")
    workers = _Workers()
    hubs: list[subprocess.Popen[bytes]] = []
    modeller = IdentityKey.generate()
    with tempfile.TemporaryDirectory(prefix="bench-hub-failover-") as tmp, postgres_schema(server) as db:
        try:
            urls = []
            for _ in range(2):  # one after another: the first migrates the schema
                hub, url = _start_hub(db, Path(tmp) / "blobs")
                hubs.append(hub)
                urls.append(url)
            names = [f"pod-{i:05d}" for i in range(n)]
            per_worker = min(PODS_PER_WORKER, -(-n // 2))
            for start in range(0, n, per_worker):
                home = (start // per_worker) % 2
                workers.start(urls[home], urls[1 - home], names[start:start + per_worker], home, modeller.public,
                              standby)
            workers.until("ready", time.time() + 300)
            keys = dict(kv for said in workers.said.values() for kv in said["ready"])
            connected_mb = [_rss_mb(h.pid) for h in hubs]  # every pod's sockets open (and standbys)
            if variant in ("before", "after"):
                killed_at = time.time()
                hubs[victim].send_signal(signal.SIGKILL)
            if variant == "after":
                workers.until("moved", time.time() + FANOUT_TIMEOUT_S, hub=victim)
            # The submission is answered once the first process's own pushes are out: it is waited for beside
            # the victim's pods, which are told of the task by LISTEN/NOTIFY and pushed to meanwhile.
            with ThreadPoolExecutor(1) as pool:
                called = time.time()
                submission = pool.submit(asyncio.run, _submit(urls[0], keys, modeller))
                if variant not in ("before", "after"):
                    workers.until("first", time.time() + FANOUT_TIMEOUT_S, hub=victim, some=True)
                    killed_at = time.time()
                    hubs[victim].send_signal(signal.SIGKILL)
                try:
                    submitted, answered = submission.result(), True
                except PodAgentError:
                    # The killed process stored the task but never answered: latencies count from the call,
                    # which includes registering the modeller and building the task.
                    submitted, answered = called, False
            deadline = submitted + FANOUT_TIMEOUT_S
            hubs[victim].wait(15)
            spy = _py_spy(hubs[1 - victim].pid, profile) if profile else None
            survivor_cpu, pods_cpu, overflows = _cpu_s(hubs[1 - victim].pid), workers.cpu_s(), _listen_overflows()
            host_cpu, postgres_cpu = _host_cpu_s(), _postgres_cpu_s()
            everyone = workers.until("all", deadline)
            survivor_cpu, pods_cpu = _cpu_s(hubs[1 - victim].pid) - survivor_cpu, workers.cpu_s() - pods_cpu
            busy, every = _host_cpu_s()
            host_cpu = (busy - host_cpu[0], every - host_cpu[1])
            postgres_cpu_s = _postgres_cpu_since(postgres_cpu)
            overflows = _listen_overflows() - overflows
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            time.sleep(SETTLE_S)
            task_id = next(said["first"] for said in workers.said.values() if "first" in said)
            workers.tell("post")
            posted = workers.until("posted", time.time() + FANOUT_TIMEOUT_S)
            stored = asyncio.run(_stored(urls[1 - victim], modeller, task_id))
            workers.tell("stop")
            workers.until("pods", time.time() + 60)
        finally:
            workers.close()
            for hub in hubs:
                hub.kill()
                hub.wait(15)
                if hub.stdout is not None:
                    hub.stdout.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    reports = [(pod, workers.procs[i][2]) for i, said in workers.said.items() for pod in said["pods"]]
    return _figures(n, variant, standby, reports, victim=victim, urls=urls, submitted=submitted, killed_at=killed_at,
                    stored=stored, complete=everyone and posted, load=load, answered=answered,
                    cpu=(survivor_cpu, pods_cpu, postgres_cpu_s, *host_cpu), overflows=overflows,
                    connected_mb=connected_mb)


def _host_cpu_s() -> tuple[float, float]:
    """The host's CPU time so far, (busy, all) summed over its cores (``/proc/stat``; busy leaves out idle and
    I/O wait)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK"), (busy + idle + iowait) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_s() -> dict[int, float]:
    """The CPU time so far of each of this host's PostgreSQL processes (server and backends; none with a remote
    --db), by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a process that ended meanwhile
            if entry.name.isdigit() and (entry / "comm").read_text().startswith("postgres"):
                out[int(entry.name)] = _cpu_s(int(entry.name))
    return out


def _postgres_cpu_since(before: dict[int, float]) -> float:
    """PostgreSQL's CPU time since ``before`` (``_postgres_cpu_s``), less that of backends that ended meanwhile
    (the killed process's)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in _postgres_cpu_s().items())


def _listen_overflows() -> int:
    """The host's count of connections dropped at a listening socket's full accept queue (TcpExt)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["ListenOverflows"])


async def _stored(url: str, modeller: IdentityKey, task_id: str) -> int:
    """How many pods' verified results the modeller reads back for the task."""
    from pod_agent.modeller import ModellerClient

    async with ModellerClient(url, modeller) as client:
        return len({r.pod for r in await client.results(task_id)})


def _figures(n: int, variant: str, standby: bool, reports: list[tuple[dict[str, Any], int]], *, victim: int,
             urls: list[str], submitted: float, killed_at: float, stored: int, complete: bool,
             load: tuple[float, float, float], answered: bool, cpu: tuple[float, float, float, float, float],
             overflows: int, connected_mb: list[float]) -> dict[str, Any]:
    survivor_url = urls[1 - victim]
    first = {p["name"]: min(t for t, _ in p["deliveries"]) for p, _ in reports if p["deliveries"]}
    moved = [p for p, home in reports if home == victim]
    stayed = [p for p, home in reports if home != victim]
    same_link = sum(1 for p, _ in reports if len({s for _, s in p["deliveries"]}) < len(p["deliveries"]))
    again = sum(1 for p, _ in reports if len({s for _, s in p["deliveries"]}) > 1)
    reconnects, noticed, registers, handshakes, slept, tries = [], [], [], [], [], []
    by_standby = 0
    for p in moved:
        after = [s for s in p["sessions"] if s[0] > killed_at]
        if after:
            opened, _, register_s, handshake_s, promoted = after[0]
            by_standby += promoted
            reconnects.append(opened - killed_at)
            # A standby is promoted as the pod notices its socket's end, with no failure of its link loop.
            noticed.append(min((at for at in p["failures"] if at >= killed_at), default=opened) - killed_at)
            registers.append(register_s)
            handshakes.append(handshake_s)
            slept.append(sum(s for at, s in p["backoff"] if killed_at <= at < opened))
            tries.append(sum(1 for at in p["failures"] if at >= killed_at))

    def latencies(pods: list[dict[str, Any]]) -> list[float]:
        return [first[p["name"]] - submitted for p in pods if p["name"] in first]

    def served_by_killed(pod: dict[str, Any]) -> bool:
        """Its first copy came from the killed process (before the kill, or out of its socket's buffers)."""
        return bool(pod["deliveries"]) and pod["sessions"][min(pod["deliveries"])[1]][0] < killed_at

    out: dict[str, Any] = {
        "variant": variant,
        "standby_sockets": standby,
        "pods": n,
        "load_avg_1_5_15": [round(v, 2) for v in load],
        "killed_process": "the submission's" if victim == 0 else "the other",
        "submission_answered": answered,
        "killed_s_after_submission": round(killed_at - submitted, 3),
        # Of the killed process's pods, those that held the task before it died.
        "moved_pods_holding_at_kill": sum(1 for p in moved if p["name"] in first and first[p["name"]] < killed_at),
        "moved_pods_served_by_killed": sum(1 for p in moved if served_by_killed(p)),
        "moved_pods": len(moved),
        "delivered": len(first),
        "lost": n - len(first),
        "duplicates_same_link": same_link,  # a task pushed twice on one connection: a hub bug
        "redelivered_after_reconnect": again,  # its ack died with the process: the agent ignores the second copy
        "fanout_all_s": _stats(latencies([p for p, _ in reports])),
        "fanout_survivors_pods_s": _stats(latencies(stayed)),
        "fanout_moved_pods_s": _stats(latencies(moved)),
        # The moved pods that got the task only from the survivor, after reconnecting.
        "fanout_reconnected_for_it_s": _stats(latencies([p for p in moved if not served_by_killed(p)])),
        "reconnect_s": _stats(reconnects),
        "reconnect_noticed_s": _stats(noticed),  # the kill to the pod's link failing
        "reconnect_backoff_slept_s": _stats(slept),
        "reconnect_failed_tries": _stats([float(t) for t in tries]),
        "reconnected_by_standby": by_standby,  # moved pods whose standby became their task socket
        "reregister_s": _stats(registers),
        "socket_handshake_s": _stats(handshakes),
        # From the killed process's end until every pod holds the task: what the survivor spent on the moved
        # pods (and its own), and the simulated pods beside it on the same cores.
        "survivor_cpu_s": round(cpu[0], 2),
        "pods_cpu_s": round(cpu[1], 2),
        "postgres_cpu_s": round(cpu[2], 2),
        # The whole host meanwhile: busy against all of its cores' time. Busy near all: the window is as long as
        # the CPU its work takes, and only less work (not a reordering of it) shortens it.
        "host_busy_cpu_s": round(cpu[3], 2),
        "host_all_cpu_s": round(cpu[4], 2),
        # Connections the kernel dropped meanwhile because a listening socket's accept queue was full (the
        # host's count): each such pod's connect is retried by its kernel 1 s later, then 3 s.
        "listen_overflows": overflows,
        "hub_rss_connected_mb": [round(v, 1) for v in connected_mb],
        "moved_to_survivor": sum(1 for p in moved if p["sessions"] and p["sessions"][-1][1] == survivor_url),
        "survivors_pods_reconnected": sum(1 for p in stayed if len(p["sessions"]) > 1),
        "result_post_s": _stats([p["posted_s"] for p, _ in reports if p["posted_s"] is not None]),
        "results_stored": stored,
    }
    out["ok"] = (
        complete and out["lost"] == 0 and same_link == 0 and stored == n
        and out["fanout_all_s"]["p99"] is not None and out["fanout_all_s"]["p99"] < GOAL_FANOUT_P99_S
    )
    return out


def run(small: bool, sizes: tuple[int, ...] | None = None, variants: tuple[str, ...] | None = None,
        server: str | None = None, standby: tuple[bool, ...] = (True,)) -> dict[str, Any]:
    """Each size under each variant, the variants of one size one after another, each with and without
    standby sockets as ``standby`` lists (interleaved)."""
    server = server or os.environ.get(POSTGRES_ENV)
    if server is None:
        return {"not_measured": f"{POSTGRES_ENV} is not set (run under .ci/with-postgres)"}
    runs = [run_once(n, variant, server, standby=held) for n in sizes or ((SMALL_SIZE,) if small else FULL_SIZES)
            for variant in variants or (SMALL_VARIANTS if small else VARIANTS) for held in standby]
    return {"runs": runs, "ok": all(r["ok"] for r in runs)}


def _s(stats: dict[str, Any]) -> str:
    return f"p50 {stats['p50']} s, p99 {stats['p99']} s, max {stats['max']} s (of {stats['n']})"


def _print(result: dict[str, Any]) -> None:
    if "not_measured" in result:
        print(f"hub failover not measured: {result['not_measured']}")
        return
    for r in result["runs"]:
        print(
            f"{r['variant']:>9} {r['pods']:>6} pods, standby sockets {'on' if r['standby_sockets'] else 'off'} "
            f"(load {'/'.join(map(str, r['load_avg_1_5_15']))}): "
            f"{r['killed_process']} process killed {abs(r['killed_s_after_submission'])} s "
            f"{'after' if r['killed_s_after_submission'] >= 0 else 'before'} the submission "
            f"(submission answered: {r['submission_answered']}); {r['moved_pods_holding_at_kill']} of its "
            f"{r['moved_pods']} pods holding the task (and "
            f"{r['moved_pods_served_by_killed']} served by it, the rest out of its sockets' buffers); delivered "
            f"{r['delivered']}, lost {r['lost']}, duplicates on one link {r['duplicates_same_link']}, redelivered "
            f"after reconnecting {r['redelivered_after_reconnect']}\n"
            f"    fan-out all {_s(r['fanout_all_s'])} (goal p99 < {GOAL_FANOUT_P99_S} s)\n"
            f"    survivor's pods {_s(r['fanout_survivors_pods_s'])}; moved pods {_s(r['fanout_moved_pods_s'])}; "
            f"those of them served only after reconnecting {_s(r['fanout_reconnected_for_it_s'])}\n"
            f"    reconnect {_s(r['reconnect_s'])}: noticed {_s(r['reconnect_noticed_s'])}, backoff slept "
            f"{_s(r['reconnect_backoff_slept_s'])}, standby promoted for {r['reconnected_by_standby']}, "
            f"re-registration {_s(r['reregister_s'])}, socket handshake "
            f"{_s(r['socket_handshake_s'])}; failed tries p99 {r['reconnect_failed_tries']['p99']}; "
            f"{r['moved_to_survivor']} moved to the survivor, {r['survivors_pods_reconnected']} of the survivor's "
            f"reconnected; CPU from the end of the killed process until all hold the task: survivor "
            f"{r['survivor_cpu_s']} s, simulated pods {r['pods_cpu_s']} s, PostgreSQL {r['postgres_cpu_s']} s, "
            f"the host busy {r['host_busy_cpu_s']} s of {r['host_all_cpu_s']} s; connections dropped at a full accept "
            f"queue {r['listen_overflows']}; hubs' RSS with every pod connected "
            f"{'/'.join(map(str, r['hub_rss_connected_mb']))} MB\n"
            f"    results stored {r['results_stored']} of {r['pods']} (post {_s(r['result_post_s'])}); ok {r['ok']}"
        )


def main() -> None:
    parser = parser_for(__doc__, small_help=f"{SMALL_SIZE} pods instead of {FULL_SIZES}")
    parser.add_argument("--pods", type=int, nargs="*", help="pod counts to run instead")
    parser.add_argument("--variant", choices=VARIANTS, action="append", help="run only this variant (repeatable)")
    parser.add_argument("--db", help=f"the PostgreSQL server URL (default ${POSTGRES_ENV})")
    parser.add_argument("--standby", choices=("on", "off", "both"), default="on",
                        help="pods hold a standby socket at the other process (the agent's default: on); both: "
                             "each run with and then without")
    args = parser.parse_args()
    standby = {"on": (True,), "off": (False,), "both": (True, False)}[args.standby]
    result = run(args.small, tuple(args.pods) if args.pods else None, tuple(args.variant or ()) or None, args.db,
                 standby)
    show(result, as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
