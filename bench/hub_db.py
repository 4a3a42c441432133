"""Benchmark: hub request latency on SQLite and on PostgreSQL, route by route, side by side.

Starts one real hub process (``pod-agent hub serve``) per backend on 127.0.0.1 (an SQLite file;
the PostgreSQL database of ``POD_AGENT_TEST_POSTGRES``, as ``.ci/with-postgres`` sets it, in a
schema of its own) and registers the same N pods with each; then times signed requests from this
process, interleaved (one request to each backend in turn, so other load on the host falls on
both alike):

- ``heartbeat``:  POST /v1/pod/heartbeat (authentication, the nonce claim, a pod's ``last_seen`` written)
- ``poll``:       GET /v1/pod/tasks?wait=0 (a pod's pending tasks read)
- ``register``:   POST /v1/pods/register again (the registration path: a pod upserted under its lock)
- ``pods``:       GET /v1/pods (the whole roster read and listed)

Each hub runs with request rates lifted so the timing is never a 429. Without PostgreSQL the
SQLite figures are printed alone. ``ratio`` is PostgreSQL's median over SQLite's.

    python -m bench.hub_db [--small] [--json]      (N = 500 pods, 300 requests per route; 50 and 60 small)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.cli import parser_for, show
from pod_agent.protocol import IdentityKey, canonical_json, sign_request

_POD_AGENT = str(Path(sys.executable).parent / "pod-agent")
POSTGRES_ENV = "POD_AGENT_TEST_POSTGRES"
PODS, SMALL_PODS = 500, 50
REQUESTS, SMALL_REQUESTS = 300, 60
ROUTES = ("heartbeat", "poll", "register", "pods")


def _registration(key: IdentityKey, name: str) -> dict[str, Any]:
    return {
        "name": name, "public_key": key.public.to_b64(), "schema_public": {"columns": []}, "schema_hash": "a" * 64,
        "row_count": 10, "sandbox_level": "none", "heartbeat_s": 15.0,
    }


@contextlib.contextmanager
def _hub(db: str, blob_dir: Path) -> Iterator[str]:
    hub = subprocess.Popen(
        [_POD_AGENT, "hub", "serve", "--db", db, "--blob-dir", str(blob_dir), "--port", "0",
         "--rate-per-s", "1000000", "--rate-burst", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        assert hub.stdout is not None
        line = hub.stdout.readline().decode()
        if "hub listening on" not in line:
            raise RuntimeError(f"hub on {db.split('?')[0]} did not start: {line!r}")
        yield line.split("hub listening on", 1)[1].strip()
    finally:
        hub.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            hub.wait(15)
        if hub.stdout is not None:
            hub.stdout.close()


async def _call(session: aiohttp.ClientSession, base: str, key: IdentityKey, method: str, path: str,
                body: Any = None) -> float:
    data = b"" if body is None else canonical_json(body)
    started = time.perf_counter()
    headers = sign_request(key, method, path, data, now=int(time.time()))
    async with session.request(method, base + path, data=data or None, headers=headers) as resp:
        await resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path} answered {resp.status}")
    return time.perf_counter() - started


async def _measure(bases: dict[str, str], pods: int, requests: int) -> dict[str, dict[str, float]]:
    keys = [(f"bench-{i}", IdentityKey.generate()) for i in range(pods)]
    samples: dict[str, dict[str, list[float]]] = {b: {r: [] for r in ROUTES} for b in bases}
    async with aiohttp.ClientSession() as session:
        for base in bases.values():
            for name, key in keys:
                await _call(session, base, key, "POST", "/v1/pods/register", _registration(key, name))
        routes = {
            "heartbeat": ("POST", "/v1/pod/heartbeat", None),
            "poll": ("GET", "/v1/pod/tasks?wait=0", None),
            "register": ("POST", "/v1/pods/register", "registration"),
            "pods": ("GET", "/v1/pods", None),
        }
        for i in range(requests):
            name, key = keys[i % pods]
            for route, (method, path, body) in routes.items():
                for backend, base in bases.items():
                    sent = _registration(key, name) if body else None
                    samples[backend][route].append(await _call(session, base, key, method, path, sent))
    return {
        backend: {
            f"{route}_{stat}_ms": round(1000 * value, 2)
            for route, values in by_route.items()
            for stat, value in (("p50", statistics.median(values)),
                                ("p99", sorted(values)[max(0, int(len(values) * 0.99) - 1)]))
        }
        for backend, by_route in samples.items()
    }


@contextlib.contextmanager
def postgres_schema(server: str) -> Iterator[str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        yield f"{server}{'&' if '?' in server else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def run(small: bool) -> dict[str, Any]:
    pods, requests = (SMALL_PODS, SMALL_REQUESTS) if small else (PODS, REQUESTS)
    server = os.environ.get(POSTGRES_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-hub-db-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        bases = {"sqlite": stack.enter_context(_hub(str(root / "hub.sqlite"), root / "blobs-sqlite"))}
        if server:
            url = stack.enter_context(postgres_schema(server))
            bases["postgresql"] = stack.enter_context(_hub(url, root / "blobs-pg"))
        measured = asyncio.run(_measure(bases, pods, requests))
    result: dict[str, Any] = {"pods": pods, "requests_per_route": requests, **{
        f"{backend}_{k}": v for backend, figures in measured.items() for k, v in figures.items()
    }}
    if "postgresql" in measured:
        for route in ROUTES:
            result[f"ratio_{route}_p50"] = round(
                measured["postgresql"][f"{route}_p50_ms"] / measured["sqlite"][f"{route}_p50_ms"], 2
            )
    else:
        result["postgresql"] = f"not measured: {POSTGRES_ENV} is not set (run under .ci/with-postgres)"
    return result


def _print(result: dict[str, Any]) -> None:
    backends = [b for b in ("sqlite", "postgresql") if f"{b}_poll_p50_ms" in result]
    print(f"hub request latency, {result['pods']} pods registered, {result['requests_per_route']} requests per route")
    print(f"{'route':<10}" + "".join(f"{b + ' p50/p99 ms':>24}" for b in backends) + ("  pg/sqlite" if len(
        backends) == 2 else ""))
    for route in ROUTES:
        cells = "".join(f"{result[f'{b}_{route}_p50_ms']:>13} / {result[f'{b}_{route}_p99_ms']:<8}" for b in backends)
        ratio = f"  {result[f'ratio_{route}_p50']:>8}" if len(backends) == 2 else ""
        print(f"{route:<10}{cells}{ratio}")
    if len(backends) == 1:
        print(f"postgresql {result['postgresql']}")


def main() -> None:
    args = parser_for(__doc__, small_help=f"{SMALL_PODS} pods and {SMALL_REQUESTS} requests per route").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
