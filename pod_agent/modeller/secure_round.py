"""The modeller's side of one SecAgg+ round: the aggregation server, talking through the hub.

Owns the server's stages for a submitted secure train task (``protocol.secure_round``
lists the messages), each bounded by the task's deadlines:

    adverts    collect the pods' KeyAdvertisements (each verified under the pod's pinned or
               registered key) until every pod advertised, finished without one, or
               ``advert_timeout_s`` passed; post each pod its own signed roster: the cohort
               entries of its neighbourhood with their proofs, and the adverts among them
    shares     collect EncryptedShares for ``stage_timeout_s``; post each pod its neighbourhood's
               part of the committed list (U2)
    masked     collect MaskedInputs for ``stage_timeout_s``; post each pod its neighbourhood's
               survivors (U3) and dropped
    unmask     collect UnmaskShares for twice ``stage_timeout_s`` (pods first compare their
               survivor lists with each other); rebuild the dropped pods' mask keys and the
               survivors' self masks; sum the survivors' vectors and remove every mask

The graph is the signed cohort's (``secagg.cohort_graph``): the modeller knows every entry, each
pod only its neighbourhood's, so the modeller's messages are one per pod and O(k log n) each.

Dropouts are handled inside the round: a pod that stops at any stage is left out of the
next list, and the round completes while each committed pod keeps ``threshold`` holders.
A round is never retried from the same weights (the pods refuse, ``already_released``).
The math is ``pod_agent.secagg.plus``; decoding the sum is ``pod_agent.secagg.aggregate``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from pod_agent.errors import HubMisbehaved, HubUnavailable, ModellerError, ProtocolError, SecAggError
from pod_agent.modeller.client import ModellerClient
from pod_agent.protocol import (
    AddressedMessage,
    AdvertRoster,
    CohortEntry,
    CohortTree,
    CommittedList,
    EncryptedShares,
    Envelope,
    KeyAdvertisement,
    MaskedInput,
    PublicKey,
    RoundMessage,
    SecAggParams,
    Stage,
    SurvivorList,
    TaskPayload,
    UnmaskShares,
    b64decode_strict,
    cohort_tree,
    open_envelope,
)

if TYPE_CHECKING:
    from pod_agent.secagg import NeighbourGraph, UnmaskAnswer

_log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=RoundMessage)
_T = TypeVar("_T")

# One long poll waits at most this long, so that a pod that failed (its result says so) is noticed soon.
POLL_S = 2.0
# The per-pod messages of a stage go out this many at a time.
POSTS_IN_FLIGHT = 16
# A request the hub could not take (its per-key rate, 429, or an outage) is sent again after this long while
# the stage's deadline allows: a stage of a large cohort is more posts than the hub's default burst.
RETRY_S = 0.5


@dataclass(frozen=True)
class SecureSum:
    """The unmasked sum of the survivors' vectors and who was in it."""

    total: npt.NDArray[np.unsignedinteger]
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]  # committed, then gone before masking
    refused: dict[str, str]  # pod -> the refusal code it sent instead of taking part
    blobs: dict[str, Path]  # each survivor's masked vector as downloaded


async def run_secure_round(
    client: ModellerClient, task: TaskPayload, cohort: Sequence[CohortEntry], *, vector_size: int, work_dir: Path,
    min_pods: int = 2,
) -> SecureSum:
    """Drive the round of ``task`` (already submitted for ``cohort``) to the survivors' unmasked sum; every
    stage goes on only with at least ``min_pods`` pods and the graph's threshold."""
    params = task.secagg
    if params is None:
        raise ModellerError(f"task {task.task_id} has no secure-aggregation parameters")
    tree = cohort_tree(cohort)
    if tree.commitment != task.cohort:
        raise ModellerError(f"task {task.task_id}: the cohort given is not the one its signed root commits to")
    keys = await client.identity_keys(list(tree.pods))
    return await _ServerRound(client, task, params, keys, tree, min_pods=min_pods).run(
        vector_size=vector_size, work_dir=work_dir
    )


class _ServerRound:
    def __init__(
        self,
        client: ModellerClient,
        task: TaskPayload,
        params: SecAggParams,
        keys: Mapping[str, PublicKey],
        tree: CohortTree,
        *,
        min_pods: int,
    ) -> None:
        self.client, self.task, self.params, self.keys, self.tree = client, task, params, keys, tree
        self.round = params.round
        self.min_pods = min_pods
        self.label = f"task {task.task_id} round {self.round}"
        self.refused: dict[str, str] = {}

    def _fields(self) -> dict[str, Any]:
        return {"task_id": self.task.task_id, "round": self.round}

    async def run(self, *, vector_size: int, work_dir: Path) -> SecureSum:
        from pod_agent.secagg import PeerKeys, cohort_graph

        stage_s = self.params.stage_timeout_s
        cohort = set(self.keys)
        try:
            graph = cohort_graph(
                dict(enumerate(self.tree.pods)), size=self.task.cohort.size, cohort_root=self.task.cohort.root,
                task_id=self.task.task_id, round_index=self.round,
            )
        except SecAggError as exc:
            raise ModellerError(f"{self.label}: {exc}") from exc
        adverts = await self._collect("advert", KeyAdvertisement, cohort, timeout_s=self.params.advert_timeout_s)
        members = sorted(adverts)
        self._enough(members, graph.threshold, "advertised round keys")
        # Each pod is shown its neighbourhood's entries with their proofs and the adverts among them; a pod
        # that did not advertise gets one too, which tells it at once that it is out of the round.
        await self._post_each("roster", [
            AdvertRoster(
                **self._fields(), to=pod, members=[self.tree.proof(name) for name in _around(graph, pod)],
                adverts=[adverts[name][1] for name in _around(graph, pod) if name in adverts],
            )
            for pod in self.tree.pods
        ])

        shared = await self._collect("shares", EncryptedShares, set(members), timeout_s=stage_s)
        committed = sorted(shared)
        self._enough(committed, graph.threshold, "shared their mask keys")
        await self._post_each("committed", [
            CommittedList(**self._fields(), to=pod, committed=[p for p in _around(graph, pod) if p in shared])
            for pod in members
        ])

        masked = await self._collect("masked", MaskedInput, set(committed), timeout_s=stage_s)
        survivors = sorted(masked)
        dropped = sorted(set(committed) - set(masked))
        self._enough(survivors, graph.threshold, "uploaded their masked inputs")
        if dropped:
            _log.warning("%s: pods %s dropped out after sharing; the round goes on without them", self.label, dropped)
        await self._post_each("survivors", [
            SurvivorList(
                **self._fields(), to=pod, survivors=[p for p in _around(graph, pod) if p in masked],
                dropped=[p for p in _around(graph, pod) if p in shared and p not in masked],
            )
            for pod in committed
        ])

        blobs: dict[str, Path] = {}
        total: npt.NDArray[np.unsignedinteger] | None = None
        for pod in survivors:
            ref = masked[pod][0].blob
            download = functools.partial(
                self.client.download_blob, ref.sha256, work_dir / f"{self.task.task_id}.{pod}.blob"
            )
            path = await _retrying(download, deadline=time.monotonic() + stage_s)
            blobs[pod] = path
            total = self._add(total, path, vector_size)

        answers = await self._collect("unmask", UnmaskShares, set(survivors), timeout_s=2 * stage_s)
        peers = {
            name: PeerKeys(pod=name, c_public_b64=advert.c_public, s_public_b64=advert.s_public)
            for name, (advert, _) in adverts.items()
        }
        from pod_agent.secagg import unmask_sum

        if total is None:
            raise ModellerError(f"{self.label}: no masked input arrived")
        try:
            unmasked = unmask_sum(
                total, graph=graph, peers=peers, committed=committed, survivors=survivors,
                answers={pod: _answer(graph, pod, message) for pod, (message, _) in answers.items()},
                task_id=self.task.task_id, round_index=self.round,
            )
        except (SecAggError, ProtocolError) as exc:
            raise ModellerError(f"{self.label}: the masks cannot be removed: {exc}") from exc
        return SecureSum(
            total=unmasked, survivors=tuple(survivors), dropped=tuple(dropped), refused=dict(self.refused), blobs=blobs
        )

    def _enough(self, pods: list[str], threshold: int, what: str) -> None:
        needed = max(threshold, self.min_pods)
        if len(pods) < needed:
            raise ModellerError(
                f"{self.label}: only {len(pods)} pods {what} ({pods}){self._refusals()}; the round needs {needed} "
                f"(threshold {threshold}, min_pods {self.min_pods}). Fix or wait for the others and train "
                "from new weights: the pods release one update per starting point"
            )

    def _refusals(self) -> str:
        # A refusal is the pod's policy speaking, not a dropout: name its code so the owner's setting shows.
        return f"; refused: {dict(sorted(self.refused.items()))}" if self.refused else ""

    def _add(
        self, total: npt.NDArray[np.unsignedinteger] | None, path: Path, vector_size: int
    ) -> npt.NDArray[np.unsignedinteger]:
        from pod_agent.secagg import modulus_dtype

        dtype = modulus_dtype(self.params.modulus_bits).newbyteorder("<")
        data = path.read_bytes()
        if len(data) != vector_size * dtype.itemsize:
            raise ModellerError(
                f"{self.label}: masked vector {path.name} is {len(data)} bytes; the round's layout needs "
                f"{vector_size} x {dtype.itemsize}"
            )
        vector = np.frombuffer(data, dtype=dtype)
        if total is None:
            return vector.astype(modulus_dtype(self.params.modulus_bits))
        # Unsigned numpy arithmetic wraps: exactly addition mod 2**bits.
        np.add(total, vector, out=total)
        return total

    async def _post_each(self, stage: Stage, messages: Sequence[AddressedMessage]) -> None:
        """Post one message per pod, POSTS_IN_FLIGHT at a time, each retried (the same signed bytes: a no-op
        at the hub if the first try was stored) while the hub is unavailable, until ``stage_timeout_s``."""
        gate = asyncio.Semaphore(POSTS_IN_FLIGHT)
        deadline = time.monotonic() + self.params.stage_timeout_s

        async def post(message: RoundMessage) -> None:
            async with gate:
                await _retrying(lambda: self.client.post_round_message(stage, message), deadline=deadline)

        await asyncio.gather(*(post(message) for message in messages))

    async def _collect(
        self, stage: Stage, model: type[_M], expected: set[str], *, timeout_s: float
    ) -> dict[str, tuple[_M, Envelope]]:
        """Each expected pod's verified message of ``stage``, until all came, the missing ones finished
        (failed or refused) without it, or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        got: dict[str, tuple[_M, Envelope]] = {}
        count = 0
        while True:
            remaining = deadline - time.monotonic()
            poll = functools.partial(
                self.client.round_messages, self.task.task_id, self.round, stage, after=count,
                wait_s=max(0.0, min(POLL_S, remaining)),
            )
            count, envelopes = await _retrying(poll, deadline=deadline + POLL_S)
            for envelope in envelopes:
                pod = str(envelope.payload.get("pod"))
                if pod in expected and pod not in got:
                    message = self._verified(envelope, model, pod, stage)
                    if message is not None:
                        got[pod] = (message, envelope)
            missing = expected - set(got)
            if not missing or time.monotonic() >= deadline:
                break
            status = await _retrying(lambda: self.client.status(self.task.task_id), deadline=deadline + POLL_S)
            for pod in missing:
                code = status.pods.get(pod, {}).get("refusal")
                if code is not None:
                    self.refused[pod] = str(code)
            if all(status.finished(pod) for pod in missing):
                break
        if expected - set(got):
            _log.info("%s: no %s message from %s", self.label, stage, sorted(expected - set(got)))
        return got

    def _verified(self, envelope: Envelope, model: type[_M], pod: str, stage: Stage) -> _M | None:
        try:
            message = open_envelope(envelope, model, self.keys[pod])
        except ProtocolError as exc:
            _log.warning("%s: %s message relayed for %s does not verify (%s); ignored", self.label, stage, pod, exc)
            return None
        if message.task_id != self.task.task_id or message.round != self.round or getattr(message, "pod", pod) != pod:
            _log.warning("%s: %s message relayed for %s belongs to another round; ignored", self.label, stage, pod)
            return None
        return message


async def _retrying(call: Callable[[], Awaitable[_T]], *, deadline: float) -> _T:
    """``call()``, again after RETRY_S while the hub is unavailable (not when it refused or misbehaved) and
    ``deadline`` allows; the round's requests are safe to repeat (a stored message again is a no-op)."""
    while True:
        try:
            return await call()
        except ModellerError as exc:
            cause = exc.__cause__
            transient = isinstance(cause, HubUnavailable) and not isinstance(cause, HubMisbehaved)
            if not transient or time.monotonic() + RETRY_S >= deadline:
                raise
        await asyncio.sleep(RETRY_S)


def _around(graph: NeighbourGraph, pod: str) -> list[str]:
    """``pod`` and its neighbours: what it is shown of the round."""
    return [pod, *graph.neighbours(pod)]


def _answer(graph: NeighbourGraph, holder: str, message: UnmaskShares) -> UnmaskAnswer:
    """A pod's wire answer as the library's UnmaskAnswer (shares indexed by the holder's place); a share
    that is not base64 is a ProtocolError."""
    from pod_agent.secagg import Share, UnmaskAnswer

    def shares(entries: Mapping[str, str]) -> dict[str, Share]:
        return {
            owner: Share(
                index=graph.share_index(holder, owner),
                data=b64decode_strict(data, what=f"{holder}'s share of {owner}"),
            )
            for owner, data in entries.items()
        }

    return UnmaskAnswer(
        self_mask_shares=shares(message.self_mask_shares), mask_key_shares=shares(message.mask_key_shares)
    )


__all__ = ["SecureSum", "run_secure_round"]
