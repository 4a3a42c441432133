"""A SecAgg+ round through a real loopback hub: real pods' round code, real keys, real state DBs.

Each pod runs ``agent.secure_round.run_secure_round`` over its own ``HubClient`` (the
daemon's transport) with a small deterministic update in place of training; the
modeller runs ``modeller.secure_round.run_secure_round`` over a ``ModellerClient``.
A pod's link can be cut after it posts a given stage (it then hangs, as a pod whose
connection died), and a modeller can be swapped for a hostile script.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from task_support import cohort_of, entries

from pod_agent.agent.hubclient import HubClient
from pod_agent.agent.secure_round import PodRoundContext, RoundOutput, run_secure_round
from pod_agent.config.settings import HubSection
from pod_agent.hub import HubLimits, SqliteStorage, create_app, listening
from pod_agent.modeller import ModellerClient, build_task
from pod_agent.policy import TrustedPeers
from pod_agent.protocol import IdentityKey, PublicKey
from pod_agent.protocol.canonical import spec_sha256
from pod_agent.protocol.hub_api import PodRegistration, RoundMessages
from pod_agent.protocol.messages import (
    DataSelection,
    Hyperparameters,
    ModelRef,
    SecAggParams,
    TaskPayload,
    WeightsRef,
)
from pod_agent.secagg import Layout, aggregate_masked
from pod_agent.state import PodState

SPEC: dict[str, Any] = {"layers": [{"type": "Linear", "in_features": 2, "out_features": 2}], "optimizer": "SGD",
                        "loss": "CrossEntropy", "learning_rate": 0.1}
# Short deadlines: a dropped pod costs the round one stage timeout.
STAGE_S = 1.5


def update_of(index: int) -> dict[str, np.ndarray]:
    """A pod's deterministic fake update: distinct per pod, within the clip bound."""
    rng = np.random.default_rng(index)
    return {"layer.weight": rng.uniform(-1, 1, (3, 4)).astype(np.float32),
            "layer.bias": rng.uniform(-1, 1, 4).astype(np.float32)}


class _Link:
    """The daemon's round transport (as ``daemon._HubFetcher``), cuttable after a stage."""

    def __init__(self, hub: HubClient, cut_after: str | None) -> None:
        self.hub, self.cut_after, self.cut = hub, cut_after, False
        self.posted: list[str] = []

    async def _dead(self) -> None:
        if self.cut:
            await asyncio.sleep(3600)  # the link is gone: nothing more leaves this pod

    async def round_post(self, path: str, body: bytes) -> None:
        await self._dead()
        await self.hub.round_post(path, body)
        stage = path.rsplit("/", 1)[1]
        self.posted.append(stage)
        if stage == self.cut_after:
            self.cut = True

    async def round_get(self, path: str, *, after: int, wait_s: float) -> RoundMessages:
        await self._dead()
        return await self.hub.round_get(path, after=after, wait_s=wait_s)

    async def put_blob(self, path: Path, sha256: str) -> None:
        await self._dead()
        await self.hub.put_blob(path, sha256)


@dataclass
class Pod:
    name: str
    key: IdentityKey
    state: PodState
    rows: int
    update: dict[str, np.ndarray]
    link: _Link | None = None
    stages: list[str] = field(default_factory=list)  # what run_secure_round's on_stage heard, in order


@dataclass
class RoundRig:
    url: str
    storage: SqliteStorage
    modeller_key: IdentityKey
    modeller: ModellerClient
    pods: dict[str, Pod]
    tmp: Path
    weights_sha: str
    outcomes: dict[str, Any] = field(default_factory=dict)

    def task(
        self, cohort: Sequence[str] | None = None, *, round_index: int = 1, key_ids: dict[str, str] | None = None,
        **secagg: Any,
    ) -> TaskPayload:
        """A secure train task for ``cohort`` (default: every pod), each under its own key id unless ``key_ids``
        names another."""
        names = list(cohort or self.pods)
        params = SecAggParams(
            prime_q=2**40, precision=2**16, num_workers=len(names), round=round_index,
            metrics=["train_loss"], advert_timeout_s=STAGE_S * 4, stage_timeout_s=STAGE_S, **secagg,
        )
        return build_task(
            modeller_id=self.modeller_key.key_id, kind="train",
            cohort=entries(names, "c" * 64, key_ids={n: self.pods[n].key.key_id for n in names} | (key_ids or {})),
            model=ModelRef(style="declarative", name="lin", spec=SPEC, sha256=spec_sha256(SPEC)),
            data=DataSelection(target="y"), hyperparameters=Hyperparameters(epochs=1),
            weights=WeightsRef(blob_id=self.weights_sha, sha256=self.weights_sha, size_bytes=1), secagg=params,
        )

    def layout(self, task: TaskPayload) -> Layout:
        assert task.secagg is not None
        return Layout.from_arrays(update_of(0), task.secagg.metrics)

    def plain_mean(self, survivors: Sequence[str]) -> dict[str, np.ndarray]:
        total = sum(self.pods[p].rows for p in survivors)
        return {name: sum(self.pods[p].rows * self.pods[p].update[name].astype(np.float64) for p in survivors) / total
                for name in update_of(0)}

    def messages(self, task: TaskPayload, stage: str) -> list[str]:
        assert task.secagg is not None
        return [r.sender for r in self.storage.round_messages(task.task_id, task.secagg.round, stage)]

    async def run_pods(
        self, task: TaskPayload, *, cut: dict[str, str] | None = None, pods: Sequence[str] | None = None
    ) -> dict[str, asyncio.Task[RoundOutput]]:
        """Start each pod's side of the round in the background; ``cut`` maps a pod to the stage after which
        its link dies."""
        started = {}
        for name in pods or [e.pod for e in cohort_of(task)]:
            started[name] = asyncio.create_task(self._pod_round(self.pods[name], task, (cut or {}).get(name)))
        return started

    async def _pod_round(self, pod: Pod, task: TaskPayload, cut_after: str | None) -> RoundOutput:
        peers = TrustedPeers({name: other.key.public for name, other in self.pods.items()})
        section = HubSection(url=self.url, request_timeout_s=5.0)
        async with HubClient(section, pod.key) as hub:
            pod.link = _Link(hub, cut_after)
            ctx = PodRoundContext(me=pod.name, key=pod.key, peers=peers,
                                  modeller_keys={self.modeller_key.key_id: self.modeller_key.public}, state=pod.state)
            blob = self.tmp / f"{pod.name}-{task.task_id}.blob"
            return await run_secure_round(
                task, pod.update, n_rows=pod.rows, metrics={"train_loss": 0.5 + pod.rows / 1000}, ctx=ctx,
                link=pod.link, blob_path=blob, on_stage=pod.stages.append,
            )


async def settle(
    tasks: dict[str, asyncio.Task[Any]], *, cut: Sequence[str] = (), timeout_s: float = 30.0
) -> dict[str, Any]:
    """Each pod's outcome (its RoundOutput or the exception it failed with); a ``cut`` pod hangs like one whose
    link died: it is cancelled once the others finished, and reported as 'cut'."""
    live = [task for name, task in tasks.items() if name not in cut]
    if live:
        await asyncio.wait(live, timeout=timeout_s)
    out: dict[str, Any] = {}
    for name, task in tasks.items():
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            out[name] = "cut"
        else:
            out[name] = task.exception() or task.result()
    return out


def decoded(rig: RoundRig, task: TaskPayload, total: np.ndarray, survivors: Sequence[str]) -> Any:
    assert task.secagg is not None
    return aggregate_masked([total], layout=rig.layout(task), params=task.secagg, n_pods=len(survivors))


@asynccontextmanager
async def round_rig(
    tmp_path: Path, n_pods: int, *, middlewares: Sequence[Callable[..., Awaitable[web.StreamResponse]]] = (),
    limits: HubLimits | None = None,
) -> AsyncIterator[RoundRig]:
    storage = SqliteStorage(":memory:")
    app = create_app(storage, blob_dir=tmp_path / "blobs", limits=limits)
    app.middlewares[:0] = middlewares
    modeller_key = IdentityKey.generate()
    async with listening(app, port=0) as url, ModellerClient(url, modeller_key) as modeller:
        await modeller.register("m")
        pods: dict[str, Pod] = {}
        for index in range(n_pods):
            name = f"pod-{index}"
            key = IdentityKey.generate()
            async with HubClient(HubSection(url=url), key) as hub:
                await hub.register(PodRegistration(
                    name=name, public_key=key.public.to_b64(), schema_public={"columns": []}, schema_hash="c" * 64,
                    row_count=100, sandbox_level="none", heartbeat_s=1.0,
                ))
            state = PodState.open(tmp_path / name / "state.sqlite")
            pods[name] = Pod(name, key, state, rows=50 + 25 * index, update=update_of(index))
        # The task's pinned weights are on the hub, as a modeller's always are (the hub refuses a task pinning a
        # blob it does not hold); the pods of these rounds never read them.
        weights_file = tmp_path / "weights.bin"
        weights_file.write_bytes(b"w")
        weights = await modeller.upload_weights(weights_file)
        rig = RoundRig(url, storage, modeller_key, modeller, pods, tmp_path, weights_sha=weights.sha256)
        try:
            yield rig
        finally:
            for pod in pods.values():
                pod.state.close()
    storage.close()


def pinned(rig: RoundRig) -> dict[str, PublicKey]:
    return {name: pod.key.public for name, pod in rig.pods.items()}
