"""Benchmark: a hub under N simulated pods: registration, a fan-out to all, heartbeats meanwhile.

Starts ``pod-agent hub serve`` as processes of their own, so that RSS and CPU are the hub's: on SQLite,
and beside it (``--db`` or $POD_AGENT_TEST_POSTGRES, a PostgreSQL server; each run gets a fresh schema)
on PostgreSQL with one process and with two, the pods split across both and the task submitted to the
first (its pods on the second are woken by LISTEN/NOTIFY). Then N lightweight pods spread over worker
processes (PODS_PER_WORKER per asyncio loop, one shared session per loop). Each pod speaks the real
protocol with the protocol package's pieces and the agent's task stream: it registers with a signed
request, opens the signed task WebSocket, sends heartbeats, and on a pushed task checks its own cohort
proof against the signed root (as a pod's verifier does) and acks it. The task's Ed25519 signature is
verified once per worker process, and a pod takes the payload only when its envelope is the verified text:
real pods verify on hosts of their own, in parallel (``_payload``). A modeller then submits one
evaluate task for all N pods (its cohort committed by a Merkle root), and the harness measures:

- registration rate (pods per second, all workers together)
- fan-out: seconds from the submission to each pod holding its verified delivery (first, p50, p99, max)
- heartbeat round trip p99 of the cohort's heartbeats sent while the fan-out runs, and beside it the p99
  lateness of the simulated pods' own event loops in that window (a round trip includes it: the harness
  shares the cores with the hub it measures, its workers busy verifying deliveries); and the round trip
  of PROBE_PODS probe pods per hub process, outside the cohort, in an idle worker, heartbeating every
  0.1 s: the hub's own answer time, which the goal is checked on. The cohort's workers run at niceness
  POD_NICENESS, so they take the CPU the hub leaves (they stand for pods on machines of their own)
- hub RSS idle (before any pod), connected, peak during the fan-out, and after it; hub and simulated
  pods' CPU from the submission to the end of the fan-out (one figure per hub process)

    python -m bench.hub_load [--pods N ...] [--db URL] [--only SETUP] [--small] [--json]
        (--small: 50 pods; default 100 1000 4000; SETUP: sqlite, postgresql or 'postgresql x2')

HUB_LOAD_PROFILE=FILE samples the (first) hub with py-spy, which must be on PATH, from the submission to
the end of the fan-out, and writes its folded stacks there.

Goals (issue 21): 10,000 pods connected; fan-out p99 < 2 s and heartbeat p99 < 100 ms with hub and
pods sharing the machine; hub RSS after the fan-out back to idle (within 10 %) and peak < 2x idle.
10,000 pods need ``ulimit -n`` of about 25,000 (each pod holds a socket at both ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp

from bench.cli import parser_for, show
from bench.hub_db import POSTGRES_ENV, postgres_schema
from pod_agent.agent.hubclient import TaskStream
from pod_agent.errors import HubUnavailable
from pod_agent.hub.fanout import TRIM_AFTER_S
from pod_agent.protocol import (
    CohortEntry,
    IdentityKey,
    PodAck,
    PodHeartbeat,
    PodRegisteredStanding,
    PodRegistration,
    PublicKey,
    TaskDelivery,
    TaskPayload,
    canonical_json,
    check_inclusion,
    open_envelope,
    parse_envelope,
    sign_request,
    signed_call,
)

FULL_SIZES = (100, 1000, 4000)
SMALL_SIZE = 50
HEARTBEAT_S = 15.0  # an agent's default (hub.heartbeat_s)
# Probe pods, outside the cohort, in a worker of their own per hub process: they heartbeat this often, and
# their worker has no deliveries to verify, so their round trip is the hub's (and the kernel's) alone.
PROBE_PODS = 8
PROBE_HEARTBEAT_S = 0.1
# The cohort's workers run at this niceness: on cores they share with the hub, the simulated pods (which
# would be machines of their own) take the CPU the hub leaves, instead of starving the hub they measure.
POD_NICENESS = 10
PODS_PER_WORKER = 500
FANOUT_TIMEOUT_S = 120.0
SETTLE_S = TRIM_AFTER_S + 2.0  # quiet after the fan-out before the hub's RSS is read again (it trims by then)
GOAL_FANOUT_P99_S = 2.0
GOAL_HEARTBEAT_P99_S = 0.1
_POD_AGENT = str(Path(sys.executable).parent / "pod-agent")
_SCHEMA_HASH = "ab" * 32


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the simulated pods (worker processes) --------------------------------------------------------


@dataclass
class _Pod:
    name: str
    key: IdentityKey
    heartbeat_s: float = HEARTBEAT_S
    received_at: float = 0.0
    connected: bool = False
    heartbeats: list[tuple[float, float]] | None = None  # (sent at, round trip)


# How often a worker's loop-lag probe wakes: its lateness is the worker's own share of a heartbeat's
# measured round trip (a reply waits in the worker until its loop gets to it).
LAG_PROBE_S = 0.01


async def _probe_lag(stop: asyncio.Event, lags: list[tuple[float, float]]) -> None:
    """(time, seconds late) of each wake-up of this worker's event loop, until ``stop``."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        lags.append((time.time(), loop.time() - asked - LAG_PROBE_S))


def _registration(name: str, key: IdentityKey) -> PodRegistration:
    """A simulated pod's registration (no schema columns; every pod the same schema hash)."""
    return PodRegistration(
        name=name, public_key=key.public.to_b64(), schema_public={}, schema_hash=_SCHEMA_HASH,
        row_count=1000, sandbox_level="none", heartbeat_s=HEARTBEAT_S,
    )


async def _register(session: aiohttp.ClientSession, url: str, pod: _Pod) -> None:
    body = canonical_json(_registration(pod.name, pod.key).model_dump(mode="json", exclude_none=True))
    await signed_call(session, pod.key, base=url, method="POST", path="/v1/pods/register", tls=False,
                      reply=PodRegisteredStanding, body=body, total_s=120)


# Each task's envelope, verified against the modeller's key once per worker process: the pods of one worker
# get the same envelope text, and a pod takes its payload only when its text is the one verified (a dict hit on
# the whole text). A real pod verifies on a host of its own (about 0.1 ms of its CPU, in parallel with every
# other pod); doing it here once per pod would put 10,000 hosts' verifications on the hub's two cores. Each
# pod still checks its own inclusion proof against the verified root.
_PAYLOADS: dict[str, TaskPayload] = {}


def _payload(delivery: TaskDelivery, modeller: PublicKey) -> TaskPayload:
    payload = _PAYLOADS.get(delivery.envelope)
    if payload is None:
        payload = open_envelope(parse_envelope(delivery.envelope), TaskPayload, modeller)
        _PAYLOADS[delivery.envelope] = payload
    return payload


async def _live(session: aiohttp.ClientSession, url: str, pod: _Pod, modeller: PublicKey) -> None:
    """One pod's task connection: heartbeats out, deliveries verified and acked, until cancelled (or the hub
    closes it). It waits on its socket without a timeout: a receive that timed out every second cost the
    simulated pods more CPU than the hub's whole fan-out."""
    headers = sign_request(pod.key, "GET", "/v1/pod/ws", b"", now=int(time.time()))
    ws = await session.ws_connect(url + "/v1/pod/ws", headers=headers, autoping=True, max_msg_size=8 << 20)
    pod.connected = True
    pod.heartbeats = []
    sent_at: list[float] = []
    async with TaskStream(ws) as stream:

        async def beat() -> None:
            await asyncio.sleep(pod.heartbeat_s * (hash(pod.name) % 1000) / 1000)  # spread the phases
            while True:
                sent_at.append(time.time())
                await stream.send(PodHeartbeat())
                await asyncio.sleep(pod.heartbeat_s)

        beater = asyncio.create_task(beat())
        try:
            while True:
                try:
                    message = await stream.receive(timeout_s=FANOUT_TIMEOUT_S + 60)
                except HubUnavailable:  # the hub closed the connection
                    return
                now = time.time()
                if isinstance(message, TaskDelivery):
                    if message.proof.entry.pod == pod.name:
                        check_inclusion(_payload(message, modeller).cohort, message.proof)
                        pod.received_at = now
                    await stream.send(PodAck(task_id=message.task_id))
                elif sent_at:
                    started = sent_at.pop(0)
                    pod.heartbeats.append((started, now - started))
        finally:
            beater.cancel()


def _worker(url: str, names: list[str], conn: Any, modeller: str, probe: bool = False) -> None:
    """A worker process: register its pods, connect them, report, wait for the fan-out, report. A probe
    worker's pods are left out of the cohort and heartbeat every PROBE_HEARTBEAT_S."""
    if not probe:
        os.nice(POD_NICENESS)
    asyncio.run(_worker_main(url, names, conn, PublicKey.from_b64(modeller), probe))


async def _worker_main(url: str, names: list[str], conn: Any, modeller: PublicKey, probe: bool) -> None:
    every = PROBE_HEARTBEAT_S if probe else HEARTBEAT_S
    pods = [_Pod(name=n, key=IdentityKey.generate(), heartbeat_s=every) for n in names]
    # One connection per pod (hub_session's pool would hold them to 100).
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_connect=60),
        auto_decompress=False,
    ) as session:
        sem = asyncio.Semaphore(64)

        async def reg(p: _Pod) -> None:
            async with sem:
                await _register(session, url, p)

        started = time.time()
        await asyncio.gather(*(reg(p) for p in pods))
        registered = time.time()
        stop = asyncio.Event()
        lags: list[tuple[float, float]] = []
        prober = asyncio.create_task(_probe_lag(stop, lags))
        lives = [asyncio.create_task(_live(session, url, p, modeller)) for p in pods]
        # Ready once every pod's task connection is open (the hub has them all before the task goes out).
        while not all(p.connected for p in pods) and not any(t.done() for t in lives):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        conn.send({"registered": (started, registered), "keys": [(p.name, p.key.key_id) for p in pods]})
        # Tell the harness when every pod here holds the task; then wait for its word to stop.
        while not conn.poll():
            if probe or all(p.received_at for p in pods):
                conn.send({"all": True})
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(conn.recv)
        stop.set()
        for life in lives:
            life.cancel()
        await asyncio.gather(*lives, prober, return_exceptions=True)
        conn.send({
            "probe": probe,
            "received": [p.received_at for p in pods],
            "heartbeats": [hb for p in pods for hb in (p.heartbeats or [])],
            "lags": lags,
        })


# -- the run ------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Sampler(threading.Thread):
    """The hub's RSS every 50 ms: the peak within a window."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            with contextlib.suppress(OSError, ValueError):
                self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(0.05)


@dataclass(frozen=True)
class Setup:
    """One hub deployment under load: SQLite, or PostgreSQL served by ``hubs`` processes (pods split across
    them, the task submitted to the first)."""

    label: str
    server: str | None = None  # a PostgreSQL server URL (each run gets a fresh schema on it); None: SQLite
    hubs: int = 1


def setups(server: str | None) -> list[Setup]:
    """SQLite, and beside it PostgreSQL with one and with two hub processes when a server is given."""
    if server is None:
        return [Setup("sqlite")]
    return [Setup("sqlite"), Setup("postgresql", server), Setup("postgresql x2", server, hubs=2)]


def _start_hub(db: str, blob_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``pod-agent hub serve`` process and its URL (its own rate limits lifted: the pods share one host)."""
    hub = subprocess.Popen(
        [_POD_AGENT, "hub", "serve", "--db", db, "--port", "0", "--blob-dir", str(blob_dir),
         "--rate-per-s", "1000000", "--rate-burst", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert hub.stdout is not None
    return hub, hub.stdout.readline().decode().split("hub listening on", 1)[1].strip()


def _py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy (on PATH) sampling ``pid``'s threads into ``out`` (folded stacks) until it gets SIGINT."""
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads",
         "--format", "raw", "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def run_size(n: int, setup: Setup) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # A file: the first hub is sampled with py-spy from the submission to the end of the fan-out.
    profile = os.environ.get("HUB_LOAD_PROFILE")
    modeller = IdentityKey.generate()  # the pods verify the task's envelope against it
    with tempfile.TemporaryDirectory(prefix="bench-hub-load-") as tmp, contextlib.ExitStack() as stack:
        db = str(Path(tmp) / "hub.sqlite") if setup.server is None else stack.enter_context(
            postgres_schema(setup.server)
        )
        hubs: list[subprocess.Popen[bytes]] = []
        workers: list[tuple[BaseProcess, Any]] = []
        try:
            urls = []
            for _ in range(setup.hubs):  # one after another: the first migrates the schema
                hub, url = _start_hub(db, Path(tmp) / "blobs")
                hubs.append(hub)
                urls.append(url)
            time.sleep(0.5)
            idle = [_rss_mb(h.pid) for h in hubs]
            names = [f"pod-{i:05d}" for i in range(n)]
            per_worker = min(PODS_PER_WORKER, -(-n // setup.hubs))
            ctx = multiprocessing.get_context("spawn")
            shares = [(urls[i % len(urls)], names[start:start + per_worker], False)
                      for i, start in enumerate(range(0, n, per_worker))]
            shares += [(u, [f"probe-{h}-{i}" for i in range(PROBE_PODS)], True) for h, u in enumerate(urls)]
            for url, share, probe in shares:
                parent, child = ctx.Pipe()
                worker = ctx.Process(target=_worker, args=(url, share, child, modeller.public.to_b64(), probe))
                worker.start()
                workers.append((worker, parent))
            ready = [conn.recv() for _, conn in workers]
            reg_start = min(r["registered"][0] for r in ready)
            reg_end = max(r["registered"][1] for r in ready)
            keys = dict(kv for r in ready for kv in r["keys"] if not kv[0].startswith("probe-"))
            connected = [_rss_mb(h.pid) for h in hubs]
            samplers = [_Sampler(h.pid) for h in hubs]
            for sampler in samplers:
                sampler.start()
            spy = _py_spy(hubs[0].pid, profile) if profile else None
            cpu_before = [_cpu_s(h.pid) for h in hubs]
            pods_cpu_before = sum(_cpu_s(proc.pid) for proc, _ in workers if proc.pid is not None)
            submitted = asyncio.run(_submit(urls[0], keys, modeller))
            deadline = time.time() + FANOUT_TIMEOUT_S
            results, pods_cpu, hubs_cpu = _wait_fanout(workers, hubs, submitted, deadline, spy)
            pods_cpu -= pods_cpu_before
            cpu = [after - before for after, before in zip(hubs_cpu, cpu_before, strict=True)]
            time.sleep(SETTLE_S if n > SMALL_SIZE else 1.0)  # the smoke size does not wait for the trim
            for sampler in samplers:
                sampler.running = False
            after = [_rss_mb(h.pid) for h in hubs]
        finally:
            for proc, _ in workers:
                if proc.is_alive():
                    proc.terminate()
            for hub in hubs:
                hub.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    hub.wait(15)
                if hub.stdout is not None:
                    hub.stdout.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    reports, fanout_end = results
    cohort = [r for r in reports if not r["probe"]]
    probes = [r for r in reports if r["probe"]]
    latencies = [t - submitted for r in cohort for t in r["received"] if t > 0]

    def within(pairs: list[list[float]]) -> list[float]:
        return [value for at, value in pairs if submitted <= at <= fanout_end]

    during = within([hb for r in cohort for hb in r["heartbeats"]])
    lag_during = within([lag for r in cohort for lag in r["lags"]])
    probed = within([hb for r in probes for hb in r["heartbeats"]])
    probe_lag = within([lag for r in probes for lag in r["lags"]])
    peak = [max(s.peak, a) for s, a in zip(samplers, after, strict=True)]
    # Several processes: each one's figures, the worst ratio counted against the goal.
    out: dict[str, Any] = {
        "setup": setup.label,
        "pods": n,
        "hub_processes": setup.hubs,
        "registered_per_s": round(n / max(reg_end - reg_start, 1e-9), 1),
        "delivered": len(latencies),
        # The first pod's: what the submission costs before anything goes out.
        "fanout_first_s": round(min(latencies, default=float("nan")), 3),
        "fanout_p50_s": round(_percentile(latencies, 0.5), 3),
        "fanout_p99_s": round(_percentile(latencies, 0.99), 3),
        "fanout_max_s": round(max(latencies, default=float("nan")), 3),
        "heartbeats_during_fanout": len(during),
        "heartbeat_p99_ms": round(1000 * _percentile(during, 0.99), 1) if during else None,  # None: none sent
        # The simulated pods' own loop lateness in the same window: a heartbeat's round trip includes it.
        "pods_loop_lag_p99_ms": round(1000 * _percentile(lag_during, 0.99), 1) if lag_during else None,
        # The probe pods' (idle workers): the hub's round trip without the busy workers' lag.
        "probe_heartbeats": len(probed),
        "probe_heartbeat_p99_ms": round(1000 * _percentile(probed, 0.99), 1) if probed else None,
        "probe_loop_lag_p99_ms": round(1000 * _percentile(probe_lag, 0.99), 1) if probe_lag else None,
        "hub_rss_idle_mb": [round(v, 1) for v in idle],
        "hub_rss_connected_mb": [round(v, 1) for v in connected],
        "hub_rss_peak_mb": [round(v, 1) for v in peak],
        "hub_rss_after_mb": [round(v, 1) for v in after],
        "hub_cpu_fanout_s": [round(v, 2) for v in cpu],  # from the submission to every pod holding the task
        "pods_cpu_fanout_s": round(pods_cpu, 2),  # the simulated pods' share of the same cores
        # Memory against the hub with its pods connected and idle (each connection holds its buffers).
        "peak_over_connected": round(max(p / c for p, c in zip(peak, connected, strict=True)), 2),
        "after_over_connected": round(max(a / c for a, c in zip(after, connected, strict=True)), 2),
    }
    out["ok"] = (
        len(latencies) == n and out["fanout_p99_s"] < GOAL_FANOUT_P99_S
        and (not probed or out["probe_heartbeat_p99_ms"] < 1000 * GOAL_HEARTBEAT_P99_S)
        and out["peak_over_connected"] < 2 and out["after_over_connected"] <= 1.1
    )
    return out


async def _submit(url: str, keys: dict[str, str], modeller: IdentityKey | None = None) -> float:
    """Register a modeller (``modeller``, or a new key) and submit one evaluate task for every pod; the time just
    before submitting."""
    from pod_agent.modeller import ModellerClient, build_task
    from pod_agent.protocol import DataSelection, model_from_file

    modeller = modeller or IdentityKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "m.py"
        model_file.write_text("import torch\n\nclass Net(torch.nn.Module):\n    pass\n")
        model = model_from_file(model_file, style="module", class_name="Net")
    cohort = [CohortEntry(pod=name, schema_hash=_SCHEMA_HASH, key_id=kid) for name, kid in keys.items()]
    task = build_task(modeller_id=modeller.key_id, cohort=cohort, kind="evaluate", model=model,
                      data=DataSelection(target="y"))
    async with ModellerClient(url, modeller) as client:
        await client.register("load")
        started = time.time()
        await client.submit_task(task, cohort)
    return started


def _wait_fanout(
    workers: list[tuple[BaseProcess, Any]], hubs: list[subprocess.Popen[bytes]], submitted: float, deadline: float,
    spy: subprocess.Popen[bytes] | None,
) -> tuple[tuple[list[dict[str, Any]], float], float, list[float]]:
    """Wait until every pod holds the task (as the workers report after they are told to stop), or the deadline.
    The pods' and hubs' CPU (and the profile) are read before the pods disconnect."""
    for _, conn in workers:
        conn.poll(max(0.0, deadline - time.time()))  # {"all": True} once every pod of the worker has it
    time.sleep(1.0)  # heartbeats sent near the end come back
    pods_cpu = sum(_cpu_s(proc.pid) for proc, _ in workers if proc.pid is not None)
    hubs_cpu = [_cpu_s(h.pid) for h in hubs]
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    for _, conn in workers:
        conn.send("stop")
    reports = []
    for _, conn in workers:
        report = conn.recv()
        reports.append(conn.recv() if "all" in report else report)
    end = max((t for r in reports for t in r["received"]), default=submitted)
    return (reports, end), pods_cpu, hubs_cpu


def run(small: bool, sizes: tuple[int, ...] | None = None, server: str | None = None) -> dict[str, Any]:
    """Each size under each setup, the setups of one size one after another (side by side)."""
    server = server or os.environ.get(POSTGRES_ENV)
    out: dict[str, Any] = {"sizes": [
        run_size(n, setup) for n in sizes or ((SMALL_SIZE,) if small else FULL_SIZES) for setup in setups(server)
    ]}
    if server is None:
        out["postgresql"] = f"not measured: {POSTGRES_ENV} is not set (run under .ci/with-postgres)"
    return out


def _mb(values: list[float]) -> str:
    return "/".join(f"{v:g}" for v in values)


def _print(result: dict[str, Any]) -> None:
    for r in result["sizes"]:
        print(
            f"{r['setup']:>13} {r['pods']:>6} pods: registered {r['registered_per_s']}/s; fan-out first "
            f"{r['fanout_first_s']} s, p50 {r['fanout_p50_s']} s, p99 {r['fanout_p99_s']} s, max {r['fanout_max_s']} s "
            f"({r['delivered']} "
            f"delivered; goal p99 < {GOAL_FANOUT_P99_S} s); heartbeat p99 {r['heartbeat_p99_ms']} ms over "
            f"{r['heartbeats_during_fanout']} (the pods' own loop lag p99 {r['pods_loop_lag_p99_ms']} ms); probe "
            f"heartbeat p99 {r['probe_heartbeat_p99_ms']} ms over {r['probe_heartbeats']} (goal < "
            f"{1000 * GOAL_HEARTBEAT_P99_S:g}; their loop lag p99 {r['probe_loop_lag_p99_ms']} ms); hub RSS MB idle "
            f"{_mb(r['hub_rss_idle_mb'])}, connected "
            f"{_mb(r['hub_rss_connected_mb'])}, peak {_mb(r['hub_rss_peak_mb'])} ({r['peak_over_connected']}x "
            f"connected), after {_mb(r['hub_rss_after_mb'])} ({r['after_over_connected']}x); CPU s in the fan-out: "
            f"hub {_mb(r['hub_cpu_fanout_s'])}, simulated pods {r['pods_cpu_fanout_s']}"
        )
    if "postgresql" in result:
        print(f"PostgreSQL {result['postgresql']}")


def main() -> None:
    parser = parser_for(__doc__, small_help=f"{SMALL_SIZE} pods instead of {FULL_SIZES}")
    parser.add_argument("--pods", type=int, nargs="*", help="pod counts to run instead")
    parser.add_argument("--db", help=f"a PostgreSQL server URL to measure beside SQLite (default ${POSTGRES_ENV})")
    parser.add_argument("--only", help="run only the setups with this label (sqlite, postgresql, 'postgresql x2')")
    args = parser.parse_args()
    sizes = tuple(args.pods) if args.pods else None
    server = args.db or os.environ.get(POSTGRES_ENV)
    chosen = [s for s in setups(server) if args.only in (None, s.label)]
    result: dict[str, Any] = {"sizes": [
        run_size(n, setup) for n in sizes or ((SMALL_SIZE,) if args.small else FULL_SIZES) for setup in chosen
    ]}
    show(result, as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
