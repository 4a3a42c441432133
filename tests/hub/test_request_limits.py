"""The hub's front door: a herd of connections held in its accept queue, authentication before any body is read,
per-route body caps, the replay cache's per-key quotas against a flooding stranger, and per-key rate limits."""

from __future__ import annotations

import asyncio
import io
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from pod_agent.hub.limits import MAX_REGISTRATION_BYTES, HubLimits
from pod_agent.protocol import IdentityKey, canonical_json, sign_request

BIG_BODY_BYTES = 16 * 1024 * 1024
UNSIGNED_POSTS = 40
# The hub before this change grew by ~690 MiB on the same load; what is left is aiohttp's buffers.
MAX_GROWTH_BYTES = 50 * 1024 * 1024
HERD = 400  # connections opened at once, past aiohttp's default accept queue of 128


def _kib(status_line: str) -> int:
    return int(status_line.split()[1]) * 1024


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = _kib(line)
    return fields


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`pod-agent hub serve` in its own process, so its memory is measured apart from the test's."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pod_agent", "hub", "serve", "--db", str(tmp_path / "hub.sqlite"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("hub listening on "), line
        yield line.split()[-1], proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)  # a hub that does not stop in time fails the test, and leaves no process
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


async def _post_big(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
    try:
        # A BytesIO shares the bytes and is sent in chunks (raw bytes this large would block the loop).
        async with session.post(url, data=io.BytesIO(body), headers=headers) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        return 0  # the hub answered and closed before taking the whole body: also a refusal


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
async def test_unsigned_large_bodies_are_refused_before_being_read_and_memory_stays_bounded(
    hub_process: tuple[str, subprocess.Popen[str]],
) -> None:
    base, proc = hub_process
    stranger = IdentityKey.generate()
    body = bytes(BIG_BODY_BYTES)
    async with aiohttp.ClientSession() as session:
        # Warm the hub up (a signed registration) so the baseline includes its steady state.
        reg = canonical_json({"name": "m", "public_key": stranger.public.to_b64()})
        headers = sign_request(stranger, "POST", "/v1/modellers/register", reg, now=int(time.time()))
        async with session.post(base + "/v1/modellers/register", data=reg, headers=headers) as resp:
            assert resp.status == 200
        before = _memory(proc.pid)
        started = time.monotonic()
        unsigned = [_post_big(session, base + "/v1/tasks", body, {}) for _ in range(UNSIGNED_POSTS)]
        # Signed by an unknown key: refused on the key, before the body, on any route but registration.
        unknown = IdentityKey.generate()
        forged = [
            _post_big(
                session,
                base + "/v1/tasks",
                body,
                sign_request(unknown, "POST", "/v1/tasks", body, now=int(time.time())),
            )
            for _ in range(5)
        ]
        statuses = await asyncio.gather(*unsigned, *forged)
        elapsed = time.monotonic() - started
        after = _memory(proc.pid)
    growth = after["VmHWM"] - before["VmRSS"]
    print(f"hub rss before {before['VmRSS'] >> 20} MiB, peak after {after['VmHWM'] >> 20} MiB, "
          f"growth {growth >> 20} MiB, {len(statuses)} posts of {BIG_BODY_BYTES >> 20} MiB in {elapsed:.1f} s")
    assert set(statuses) <= {401, 0} and 401 in statuses, statuses
    assert growth < MAX_GROWTH_BYTES, growth


def test_a_client_that_stalls_in_a_refused_body_does_not_hold_up_the_hubs_stop(
    hub_process: tuple[str, subprocess.Popen[str]],
) -> None:
    base, proc = hub_process
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as stalled:
        # A large body declared, a little of it sent, then nothing: the hub refuses it unread and, with
        # aiohttp's defaults, read on for 10 s, and its stop on SIGTERM waited for that.
        stalled.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: hub\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        assert stalled.recv(64).startswith(b"HTTP/1.1 401")
        proc.terminate()
        assert proc.wait(timeout=6) == 0


async def test_a_registered_key_cannot_make_a_small_route_buffer_a_large_body(hub: Any) -> None:
    pod = IdentityKey.generate()
    assert (await hub.caller(pod).call("POST", "/v1/pods/register", hub.pod_registration(pod, "pod-a")))[0] == 200
    big = b"x" * (1024 * 1024)
    status, body = await hub.caller(pod).call("POST", "/v1/pod/tasks/x/ack", raw=big)
    assert status == 413 and "over this route's cap of 65536 bytes" in body["error"]

    # Without a Content-Length (chunked), the cap is met while streaming.
    async def chunks() -> Any:
        for _ in range(16):
            yield b"y" * (64 * 1024)

    headers = sign_request(pod, "POST", "/v1/pod/heartbeat", big, now=int(time.time()))
    async with hub.session.post(hub.base + "/v1/pod/heartbeat", data=chunks(), headers=headers) as resp:
        assert resp.status == 413 and "over this route's cap" in (await resp.json())["error"]


async def test_registration_of_an_unknown_key_reads_at_most_the_registration_cap(hub: Any) -> None:
    stranger = IdentityKey.generate()
    body = hub.pod_registration(stranger, "pod-x")
    body["schema_public"] = {"columns": ["c" * 1000] * (MAX_REGISTRATION_BYTES // 1000)}
    status, reply = await hub.caller(stranger).call("POST", "/v1/pods/register", body)
    assert status == 413 and f"cap of {MAX_REGISTRATION_BYTES} bytes" in reply["error"]


async def test_far_future_timestamps_are_refused(hub: Any) -> None:
    modeller = IdentityKey.generate()
    reg = {"name": "m", "public_key": modeller.public.to_b64()}
    assert (await hub.caller(modeller).call("POST", "/v1/modellers/register", reg))[0] == 200
    for skew, expected in ((300, 401), (31, 401), (25, 200)):
        headers = sign_request(modeller, "GET", "/v1/pods", b"", now=int(time.time()) + skew)
        async with hub.session.get(hub.base + "/v1/pods", headers=headers) as resp:
            assert resp.status == expected, (skew, await resp.text())


async def test_a_flooding_stranger_cannot_lock_out_honest_pods_and_modellers(make_hub: Any) -> None:
    """The replay-floor attack: a self-registered key floods requests stamped ahead of the clock; the
    cache sheds the flooder's entries only, and the honest pod and modeller are still served."""
    hub = await make_hub(limits=HubLimits(replay_entries=100, replay_entries_per_key=40, rate_burst=10_000))
    modeller, pod, stranger = IdentityKey.generate(), IdentityKey.generate(), IdentityKey.generate()
    assert (
        await hub.caller(modeller).call(
            "POST", "/v1/modellers/register", {"name": "m", "public_key": modeller.public.to_b64()}
        )
    )[0] == 200
    assert (await hub.caller(pod).call("POST", "/v1/pods/register", hub.pod_registration(pod, "pod-a")))[0] == 200
    assert (await hub.caller(stranger).call("POST", "/v1/pods/register", hub.pod_registration(stranger, "evil")))[
        0
    ] == 200

    async def stamped(key: IdentityKey, path: str, skew: int) -> int:
        headers = sign_request(key, "GET", path, b"", now=int(time.time()) + skew)
        async with hub.session.get(hub.base + path, headers=headers) as resp:
            await resp.read()
            return resp.status

    # +300 s, as the attack on the old cache did: refused at the door, never cached.
    assert {await stamped(stranger, "/v1/pod/tasks?wait=0", 300) for _ in range(20)} == {401}
    # +30 s, the most the window allows, many times over the cache's size.
    flood = await asyncio.gather(*(stamped(stranger, "/v1/pod/tasks?wait=0", 30) for _ in range(300)))
    assert flood.count(200) >= 40
    for _ in range(20):
        assert await stamped(pod, "/v1/pod/tasks?wait=0", 0) == 200
        assert await stamped(modeller, "/v1/pods", 0) == 200


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_are_served(make_hub: Any) -> None:
    hub = await make_hub(limits=HubLimits(rate_per_s=0.5, rate_burst=3))
    busy, calm = IdentityKey.generate(), IdentityKey.generate()
    for key, name in ((busy, "busy"), (calm, "calm")):
        assert (
            await hub.caller(key).call(
                "POST", "/v1/modellers/register", {"name": name, "public_key": key.public.to_b64()}
            )
        )[0] == 200
    statuses = [(await hub.caller(busy).call("GET", "/v1/pods"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    headers = sign_request(busy, "GET", "/v1/pods", b"", now=int(time.time()))
    async with hub.session.get(hub.base + "/v1/pods", headers=headers) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert "--rate-per-s" in (await resp.json())["error"]
    assert (await hub.caller(calm).call("GET", "/v1/pods"))[0] == 200
    # Requests forged under the busy key's id spend nothing of another key's bucket.
    async with hub.session.get(
        hub.base + "/v1/pods",
        headers={**sign_request(calm, "GET", "/v1/pods", b"", now=int(time.time())), "X-Pod-Signature": "AAAA"},
    ) as resp:
        assert resp.status == 401
    assert (await hub.caller(calm).call("GET", "/v1/pods"))[0] == 200


def _connected_within(host: str, port: int, count: int, wait_s: float) -> int:
    """How many of ``count`` connections opened at once to host:port are established within ``wait_s``."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.setblocking(False)
            sock.connect_ex((host, port))
        deadline, established = time.monotonic() + wait_s, set()
        while len(established) < count and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], [s for s in sockets if s not in established], [], left)
            established.update(s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        return len(established)
    finally:
        for sock in sockets:
            sock.close()


async def test_a_herd_of_connections_arriving_while_the_hub_is_busy_waits_in_its_accept_queue(hub: Any) -> None:
    # The pods of a hub process that died reconnect to the survivor within a second while its loop is busy: the
    # kernel holds their connections until it accepts them. aiohttp's default queue (128) dropped the rest, each
    # connect retried by its kernel 1 s later. Here the hub's loop accepts nothing meanwhile: it waits on this.
    where = urlsplit(hub.base)
    assert where.hostname is not None and where.port is not None
    assert _connected_within(where.hostname, where.port, HERD, wait_s=0.5) == HERD
