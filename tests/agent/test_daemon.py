"""The daemon in-process against a real loopback hub: fallback to long polling, refusals, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from agent_support import HubWithAgent, hub_with_agent
from aiohttp import web
from task_support import cohort_of, entries

from pod_agent.agent.hubclient import HubClient
from pod_agent.agent.pipeline import PipelineOutput, TaskPipeline
from pod_agent.modeller import ModellerClient, VerifiedResult, build_task
from pod_agent.policy import PrivacyFloor
from pod_agent.protocol import IdentityKey, cohort_tree, envelope_bytes, sign_envelope
from pod_agent.protocol.messages import ProgressEvent

DAEMON_CSV = "age,hours,TARGET\n" + "".join(
    f"{20 + i % 40},{i % 60},{'>50K' if i % 3 else '<=50K'}\n" for i in range(100)
)


@web.middleware
async def _no_websocket(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path == "/v1/pod/ws":
        return web.json_response({"error": "no websockets here"}, status=404)
    return await handler(request)


@pytest.fixture(params=["websocket", "long-poll"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubWithAgent]:
    middlewares = [_no_websocket] if request.param == "long-poll" else []
    async with hub_with_agent(tmp_path, DAEMON_CSV, middlewares=middlewares, stop_within_s=10) as rig:
        yield rig


async def test_schema_stats_round_trip_over_websocket_or_long_poll(rig: HubWithAgent) -> None:
    task = build_task(
        modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="schema-stats")
    await rig.modeller.submit_task(task, cohort_of(task))
    answers = await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20)
    result = answers["pod-a"]
    assert isinstance(result, VerifiedResult) and result.payload.status == "done"
    assert result.payload.metrics["rows"] == result.payload.n_rows == 100


async def test_task_signed_by_an_unknown_modeller_is_refused_with_its_code_only(rig: HubWithAgent) -> None:
    stranger = IdentityKey.generate()
    async with ModellerClient(rig.hub_url, stranger) as other:
        await other.register("stranger")
        task = build_task(
            modeller_id=stranger.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="schema-stats")
        await other.submit_task(task, cohort_of(task))
        answers = await other.wait_results(task.task_id, ["pod-a"], timeout_s=20)
    assert answers == {"pod-a": "unknown_signer"}


async def test_policy_refusal_comes_back_signed_by_the_pod(rig: HubWithAgent) -> None:
    task = build_task(modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], "0" * 64), kind="schema-stats")
    await rig.modeller.submit_task(task, cohort_of(task))
    answers = await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20)
    result = answers["pod-a"]
    assert isinstance(result, VerifiedResult)
    assert (result.payload.status, result.payload.reason) == ("refused", "schema_mismatch")


def test_the_daemon_does_not_import_torch_at_start() -> None:
    code = (
        "import sys, pod_agent.agent.daemon, pod_agent.cli.run; "
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_task_not_yet_valid_is_left_with_the_hub_unacknowledged(rig: HubWithAgent) -> None:
    task = build_task(
        modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="schema-stats",
        now=int(time.time()) + 600,
    )
    await rig.modeller.submit_task(task, cohort_of(task))
    await asyncio.sleep(1.5)
    status = await rig.modeller.status(task.task_id)
    assert status.pods["pod-a"] == {"acked": False, "refusal": None, "result": None, "progress": None}


async def test_an_unexpected_error_fails_only_its_task_and_the_agent_keeps_serving(
    rig: HubWithAgent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_schema_stats = TaskPipeline._schema_stats
    calls = 0

    async def buggy_once(self: TaskPipeline, floor: PrivacyFloor) -> PipelineOutput:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("unhashable type: 'list' [secret-row-value]")
        return await real_schema_stats(self, floor)

    monkeypatch.setattr(TaskPipeline, "_schema_stats", buggy_once)
    results = []
    for _ in range(2):
        task = build_task(
            modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="schema-stats")
        await rig.modeller.submit_task(task, cohort_of(task))
        results.append((await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20))["pod-a"])
    first, second = results
    assert isinstance(first, VerifiedResult) and (first.payload.status, first.payload.reason) == (
        "failed",
        "internal_error",
    )
    assert isinstance(second, VerifiedResult) and second.payload.status == "done"
    assert "unexpected TypeError at test_daemon.py" in caplog.text and "secret-row-value" not in caplog.text


async def test_an_unexpected_error_in_a_loop_restarts_that_loop_and_the_agent_keeps_serving(
    rig: HubWithAgent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_progress = HubClient.progress
    calls = 0

    async def buggy_once(self: HubClient, event: ProgressEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("unexpected [secret-hub-text]")
        await real_progress(self, event)

    monkeypatch.setattr(HubClient, "progress", buggy_once)
    for _ in range(2):
        task = build_task(
            modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="schema-stats")
        await rig.modeller.submit_task(task, cohort_of(task))
        result = (await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20))["pod-a"]
        assert isinstance(result, VerifiedResult) and result.payload.status == "done"
    # The restarted loop sends again once its backoff is over, which may be after both results are in.
    deadline = asyncio.get_running_loop().time() + 15
    while calls == 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert calls > 1
    assert "progress loop ended on an unexpected TypeError at test_daemon.py" in caplog.text
    assert "secret-hub-text" not in caplog.text


async def test_a_registration_held_for_approval_is_asked_again_until_admitted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held = 0

    @web.middleware
    async def approve_after_three(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # A hub serving `--registration approve` whose admin approves the pod after its third try.
        nonlocal held
        if request.path == "/v1/pods/register" and held < 3:
            held += 1
            await handler(request)
            key_id = request.headers["X-Pod-Key-Id"]
            return web.json_response({"pod": "pod-a", "key_id": key_id, "new": held == 1, "pending": True,
                                      "message": "awaiting approval"}, status=202)
        return await handler(request)

    async with hub_with_agent(tmp_path, DAEMON_CSV, middlewares=[approve_after_three], stop_within_s=10) as rig:
        task = build_task(
            modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="schema-stats")
        await rig.modeller.submit_task(task, cohort_of(task))
        result = (await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20))["pod-a"]
    assert isinstance(result, VerifiedResult) and result.payload.status == "done"
    assert held == 3
    assert "holds this pod's registration for approval (awaiting approval): its admin runs" in caplog.text


class _PodTraffic:
    """A middleware's record of each signed request (signer, route, status) and of the open task sockets'
    connections, which the test closes the way a dying hub process's kernel does."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self.sockets: list[asyncio.Transport] = []
        self.dead = False

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        signer = request.headers.get("X-Pod-Key-Id", "")
        if self.dead:
            self.requests.append((signer, request.path_qs, 503))
            return web.json_response({"error": "this hub process is gone"}, status=503)
        socket = request.path == "/v1/pod/ws"
        if socket and request.transport is not None:
            self.sockets.append(request.transport)  # type: ignore[arg-type]
        # A socket's handler returns when it closes: it counts as open (101) from its arrival.
        at = len(self.requests)
        self.requests.append((signer, request.path_qs, 101 if socket else 0))
        response = await handler(request)
        self.requests[at] = (signer, request.path_qs, response.status)
        return response

    def of(self, key_id: str) -> list[tuple[str, int]]:
        return [(path, status) for signer, path, status in self.requests if signer == key_id]

    def cut(self) -> None:
        for transport in self.sockets:
            transport.close()
        self.sockets.clear()


_STANDBY = "/v1/pod/ws?standby=1"


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def _with_a_process_to_kill(
    tmp_path: Path, **hub: Any
) -> AsyncIterator[tuple[HubWithAgent, _PodTraffic, _PodTraffic]]:
    """The pod's task socket at a second server of the rig's hub (``dying``'s traffic), the rig's own the other;
    ``hub`` more fields of the pod's hub section. A backoff step of up to 10 minutes: no move to the other
    process may wait for one."""
    dying, other = _PodTraffic(), _PodTraffic()
    async with hub_with_agent(
        tmp_path, DAEMON_CSV, middlewares=[other.middleware], other_process=[dying.middleware], stop_within_s=10,
        hub={"backoff_initial_s": 600.0, "backoff_cap_s": 600.0, **hub},
    ) as rig:
        yield rig, dying, other


async def _schema_stats_done(modeller: ModellerClient, schema_hash: str) -> None:
    """A schema-stats task for pod-a submitted through ``modeller``: its result comes back, done."""
    task = build_task(modeller_id=modeller.key.key_id, cohort=entries(["pod-a"], schema_hash), kind="schema-stats")
    await modeller.submit_task(task, cohort_of(task))
    result = (await modeller.wait_results(task.task_id, ["pod-a"], timeout_s=20))["pod-a"]
    assert isinstance(result, VerifiedResult) and result.payload.status == "done"


async def test_a_pod_whose_hub_process_dies_goes_on_over_its_standby_socket_at_the_other_with_no_handshake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _with_a_process_to_kill(tmp_path) as (rig, dying, other):
        pod = rig.pod.key_id
        await _until(lambda: other.of(pod) == [(_STANDBY, 101)], "the pod's standby socket at the other process")
        assert dying.of(pod)[-1] == ("/v1/pod/ws", 101)
        dying.dead = True
        dying.cut()
        await _schema_stats_done(rig.modeller, rig.pod.schema_hash)
        # The task came on the promoted standby: no socket opened at the other process since, no registration;
        # the result went there. The pod's next standby is asked of the dead process (refused there).
        assert [r for r in other.of(pod) if r[0].startswith(("/v1/pod/ws", "/v1/pods/"))] == [(_STANDBY, 101)]
        assert ("/v1/pod/results", 201) in other.of(pod)
        assert ("/v1/pod/ws", 503) not in dying.of(pod)
    assert f"the standby at {rig.hub_url} takes over" in caplog.text


async def test_a_standby_socket_that_ends_is_opened_again_and_the_task_socket_stays(tmp_path: Path) -> None:
    home, other = _PodTraffic(), _PodTraffic()
    async with hub_with_agent(
        tmp_path, DAEMON_CSV, middlewares=[other.middleware], other_process=[home.middleware], stop_within_s=10,
    ) as rig:
        pod = rig.pod.key_id
        await _until(lambda: other.of(pod) == [(_STANDBY, 101)], "the pod's standby socket at the other process")
        other.cut()
        await _until(lambda: other.of(pod) == [(_STANDBY, 101)] * 2, "the standby opened again")
        assert [r for r in home.of(pod) if r[0].startswith("/v1/pod/ws")] == [("/v1/pod/ws", 101)]


async def test_a_hostile_process_holding_the_standby_is_an_outage_of_the_standby_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The process that holds the pod's standby pushes on it a task signed by a key the pod does not know, then a
    frame that is no HubPush: the pod refuses the task as it would from any hub, drops that standby, and its
    tasks go on over its task socket at the other process."""
    stranger, go, done = IdentityKey.generate(), asyncio.Event(), asyncio.Event()
    forged: list[str] = []

    @web.middleware
    async def hostile(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path_qs != _STANDBY or done.is_set():
            return await handler(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await go.wait()
        task = build_task(modeller_id=stranger.key_id, cohort=entries(["pod-a"], forged[0]), kind="schema-stats")
        await ws.send_str(json.dumps({
            "type": "task", "task_id": task.task_id, "envelope": envelope_bytes(sign_envelope(task, stranger)).decode(),
            "proof": json.loads(cohort_tree(cohort_of(task)).proof_json("pod-a")),
        }))
        await ws.send_str("not a HubPush")
        done.set()
        await ws.receive()
        return ws

    with caplog.at_level(logging.DEBUG, logger="pod_agent.agent.tasksockets"):
        async with hub_with_agent(
            tmp_path, DAEMON_CSV, middlewares=[hostile], other_process=[], stop_within_s=10,
        ) as rig:
            forged.append(rig.pod.schema_hash)
            go.set()
            await asyncio.wait_for(done.wait(), 10)
            # Submitted where the pod's task socket is (the rig's two servers share storage, not wake-ups).
            async with ModellerClient(rig.pod_hub_url, rig.modeller.key) as modeller:
                await _schema_stats_done(modeller, rig.pod.schema_hash)
    assert "task refused: unknown_signer" in caplog.text
    ended = f"standby task socket at {rig.hub_url} ended: hub's message on the task connection is not usable JSON"
    assert ended in caplog.text
    assert "takes over" not in caplog.text


async def test_without_a_standby_a_pod_whose_hub_process_dies_opens_its_socket_at_the_other_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _with_a_process_to_kill(tmp_path, standby_socket=False) as (rig, dying, other):
        pod = rig.pod.key_id
        assert dying.of(pod)[-1] == ("/v1/pod/ws", 101) and other.of(pod) == []
        dying.dead = True
        dying.cut()
        await _until(lambda: ("/v1/pod/ws", 101) in other.of(pod), "the pod's socket at the other process")
        # No refused try at the dead process, and no registration at the other (the hub knows the pod):
        # its first request there opens the socket.
        assert dying.of(pod)[-1] == ("/v1/pod/ws", 101)
        assert other.of(pod) == [("/v1/pod/ws", 101)]
        await _schema_stats_done(rig.modeller, rig.pod.schema_hash)
    assert f"hub {rig.pod_hub_url} unavailable; the next try goes to {rig.hub_url}" in caplog.text


async def test_a_reconnecting_pod_registers_again_only_when_the_hub_does_not_know_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    traffic = _PodTraffic()
    async with hub_with_agent(tmp_path, DAEMON_CSV, middlewares=[traffic.middleware], stop_within_s=10) as rig:
        pod = rig.pod.key_id
        assert traffic.of(pod) == [("/v1/pods/register", 200), ("/v1/pod/ws", 101)]
        traffic.cut()
        await _until(lambda: len(traffic.of(pod)) == 3, "the pod's reconnection")
        assert traffic.of(pod)[2:] == [("/v1/pod/ws", 101)]

        # Its record released (as for a re-keyed pod's name): the hub refuses the session, the pod registers.
        assert rig.storage.release_pod("pod-a")
        traffic.cut()
        await _until(lambda: len(traffic.of(pod)) == 6, "the pod's registration and socket")
        assert traffic.of(pod)[3:] == [("/v1/pod/ws", 401), ("/v1/pods/register", 200), ("/v1/pod/ws", 101)]
        assert rig.storage.pod_by_key(pod) is not None
    assert f"the hub at {rig.hub_url} refused this pod's session (401); registering again" in caplog.text
