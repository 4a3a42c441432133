"""The pod's side of one SecAgg+ round, after its sandboxed training and contract check.

Owns the stages a pod runs for a secure train task (``protocol.secure_round`` lists
the messages) and every check it makes before it lets anything go:

    advert       fresh RoundSecrets (memory only) -> KeyAdvertisement, signed by the identity key
    roster       signed by the task's modeller and addressed to this pod; its cohort entries, each
                 proven against the signed task's root, are exactly this pod's neighbourhood as the
                 ring computed from the signed task places it (``secagg.cohort_graph``: an entry
                 outside it is ``roster_not_neighbour``, a neighbour left out ``roster_incomplete``,
                 so the modeller cannot place the pod); every forwarded advert verified HERE under
                 the peer key the owner pinned (``policy.TrustedPeers``, never the hub's registry),
                 for this task and round; this pod's own advert unchanged; at least ``threshold``
                 of the neighbourhood advertised
    shares       one AEAD ciphertext per neighbour (secagg.plus)
    committed    signed by the modeller, addressed here, within the roster, this pod in it;
                 ciphertexts from every committed neighbour
    masked       the one-release rule recorded in the state DB (``already_released``) in the
                 transaction that decides the release, then masked vector -> blob -> MaskedInput
    consistency  the survivor list (this neighbourhood's) signed back; every neighbour's signed
                 list must agree with ours on the pods both name, and at least ``threshold`` of the
                 neighbourhood must have signed
    unmask       survivors and dropped disjoint, within the committed neighbours, at least
                 ``threshold`` surviving; a pod w is answered about only when at least ``threshold``
                 of w's own neighbourhood signed w's status as ours (``secagg.confirmed_owners``
                 says why that stops the modeller from showing w in two roles). Answered once,
                 then every secret is erased

A pod holds only its neighbourhood's entries, never the cohort's list: what it receives in a
round grows with the degree k and log n (``protocol.secure_round``).

Each wait is bounded by the task's stage deadlines and ends the task with a fixed
code (``policy.FailureCode``). The secrets never touch disk: a pod that restarts
mid-round has dropped out (the daemon fails such a task at start-up).
The math is ``pod_agent.secagg.plus``; the hub route and long poll are ``hub.round_routes``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from pydantic import ValidationError

from pod_agent.errors import HubError, HubMisbehaved, HubRejected, ProtocolError, SecAggError, StateError, TaskFailed
from pod_agent.policy import FailureCode, TrustedPeers
from pod_agent.protocol import (
    AddressedMessage,
    AdvertRoster,
    BlobRef,
    CohortProof,
    CommittedList,
    ConsistencySignature,
    EncryptedShares,
    Envelope,
    IdentityKey,
    KeyAdvertisement,
    MaskedInput,
    PublicKey,
    RoundMessage,
    RoundMessages,
    SecAggParams,
    Stage,
    SurvivorList,
    TaskPayload,
    UnmaskShares,
    b64decode_strict,
    check_inclusion,
    envelope_bytes,
    open_envelope,
    round_path,
    sign_envelope,
)
from pod_agent.state import AlreadyReleased, PodState

if TYPE_CHECKING:
    from pod_agent.secagg import EncodedUpdate, HeldShares, NeighbourGraph, RoundSecrets, SurvivorView

_log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=RoundMessage)
_R = TypeVar("_R")

# One long-poll request waits at most this long (the hub caps it at 30 s too); the stage deadline bounds the total.
POLL_S = 20.0
# A failed request to the hub is retried after this long, while the stage deadline allows.
RETRY_S = 0.5


class RoundLink(Protocol):
    """What a secure round needs from the hub: post and long-poll round messages, upload a blob."""

    async def round_post(self, path: str, body: bytes) -> None: ...

    async def round_get(self, path: str, *, after: int, wait_s: float) -> RoundMessages:
        """The stage's long-poll reply, validated; HubMisbehaved when the hub's reply is not one."""

    async def put_blob(self, path: Path, sha256: str) -> None: ...


@dataclass(frozen=True)
class PodRoundContext:
    """What this pod brings to every round: its name and key, the peers and modellers its owner
    trusts (key id -> key), and the state DB that remembers releases."""

    me: str
    key: IdentityKey
    peers: TrustedPeers
    modeller_keys: Mapping[str, PublicKey]
    state: PodState


@dataclass(frozen=True)
class RoundOutput:
    """The masked vector this pod released (its blob, referenced by the signed result)."""

    blob_path: Path
    blob: BlobRef
    n_clipped: int


def starting_point(task: TaskPayload) -> str:
    """What the one-release rule counts: the sha256 of the weights a train task starts from."""
    if task.weights is None:
        raise TaskFailed(
            FailureCode.SECAGG_ERROR.value, "a secure train task must pin the weights it starts from"
        )
    return task.weights.sha256


def check_unreleased(state: PodState, task: TaskPayload) -> None:
    """Fail early (``already_released``) when this pod already released from the task's starting weights."""
    earlier = state.released(starting_point(task))
    if earlier is not None:
        raise TaskFailed(
            FailureCode.ALREADY_RELEASED.value,
            f"task {earlier} already released an update trained from these weights; one release per starting point",
        )


async def run_secure_round(
    task: TaskPayload,
    arrays: Mapping[str, Any],
    *,
    n_rows: int,
    metrics: Mapping[str, float],
    ctx: PodRoundContext,
    link: RoundLink,
    blob_path: Path,
    on_stage: Callable[[str], None] = lambda _stage: None,
) -> RoundOutput:
    """Take part in the task's round with this update; raise TaskFailed with a fixed code when it cannot.
    ``on_stage`` hears each local step end (``encoded``, ``masking`` begun, ``masked``, ``uploaded``), for the
    pipeline's stage clock: the rest is waiting for the cohort."""
    from pod_agent.secagg import RoundSecrets, encode_update

    params = task.secagg
    if params is None:
        raise TaskFailed(FailureCode.SECAGG_ERROR.value, "run_secure_round needs a task with secagg parameters")
    try:
        # A metric the task names but training did not report travels as absent (its row count 0).
        encoded = await asyncio.to_thread(
            encode_update, arrays, params=params, n_rows=n_rows, returns=task.returns, metrics=metrics,
            metric_names=params.metrics,
        )
    except SecAggError as exc:
        raise TaskFailed(FailureCode.SECAGG_ERROR.value, str(exc)) from exc
    on_stage("encoded")
    secrets = RoundSecrets.generate()
    try:
        return await _Round(task, params, ctx, link, secrets, on_stage).run(encoded, blob_path)
    finally:
        secrets.erase()


def _modeller_key(task: TaskPayload, ctx: PodRoundContext) -> PublicKey:
    key = ctx.modeller_keys.get(task.modeller_id)
    if key is None:
        raise TaskFailed(FailureCode.UNKNOWN_SIGNER.value, "the task's modeller left security.modellers")
    return key


class _Round:
    """One round's state on this pod; ``run`` goes through the stages in order."""

    def __init__(
        self, task: TaskPayload, params: SecAggParams, ctx: PodRoundContext, link: RoundLink, secrets: RoundSecrets,
        on_stage: Callable[[str], None],
    ) -> None:
        self.task, self.params, self.ctx, self.link, self.secrets = task, params, ctx, link, secrets
        self.on_stage = on_stage
        self.me = ctx.me
        self.round = params.round
        self.modeller = _modeller_key(task, ctx)
        # The neighbourhood's advertisers: name -> the identity key the owner pinned for it, filled by
        # _check_adverts from each one's cohort entry, proven against the signed task's root (this pod holds no
        # other list).
        self.cohort: dict[str, PublicKey] = {}

    def _fields(self) -> dict[str, Any]:
        return {"task_id": self.task.task_id, "round": self.round}

    async def run(self, encoded: EncodedUpdate, blob_path: Path) -> RoundOutput:
        from pod_agent.secagg import PeerKeys

        mine = KeyAdvertisement(
            **self._fields(), pod=self.me, c_public=self.secrets.c_public_b64, s_public=self.secrets.s_public_b64
        )
        await self._post("advert", mine)
        stage_s = self.params.stage_timeout_s
        # The modeller collects each stage for stage_s before it answers: a pod waits twice that.
        answer_s = 2 * stage_s
        roster = await self._modeller_message("roster", AdvertRoster, timeout_s=self.params.advert_timeout_s + answer_s)
        graph = self._neighbourhood(roster)
        adverts = self._check_adverts(roster, mine, graph)
        peers = {
            name: PeerKeys(pod=name, c_public_b64=a.c_public, s_public_b64=a.s_public) for name, a in adverts.items()
        }
        neighbours = frozenset(graph.neighbours(self.me))
        if len(neighbours & set(adverts)) + 1 < graph.threshold:
            raise TaskFailed(
                FailureCode.TOO_FEW_NEIGHBOURS.value,
                f"{len(neighbours & set(adverts))} of {len(neighbours)} neighbours advertised keys in a graph of "
                f"threshold {graph.threshold}",
            )
        common = {
            "me": self.me,
            "graph": graph,
            "peers": peers,
            "task_id": self.task.task_id,
            "round_index": self.round,
        }

        ciphertexts = _encrypt(self.secrets, common)
        shares = EncryptedShares(
            **self._fields(), pod=self.me,
            ciphertexts={name: _b64(ct) for name, ct in sorted(ciphertexts.items())},
        )
        await self._post("shares", shares)

        committed_msg = await self._modeller_message("committed", CommittedList, timeout_s=answer_s)
        committed = frozenset(committed_msg.committed)
        if not committed <= set(adverts) or len(committed) != len(committed_msg.committed):
            raise TaskFailed(FailureCode.BAD_ROUND_MESSAGE.value, "the committed list names pods outside the roster")
        if self.me not in committed:
            raise TaskFailed(FailureCode.NOT_IN_ROUND.value, "the modeller did not commit this pod's shares")
        received = await self._my_ciphertexts(neighbours & committed, timeout_s=stage_s)
        try:
            held = self._decrypt(received, common)
        except SecAggError as exc:
            raise TaskFailed(
                FailureCode.BAD_ROUND_MESSAGE.value, f"a neighbour's shares do not decrypt: {exc}"
            ) from exc

        blob = await self._release(encoded, blob_path, common, committed)

        survivors_msg = await self._modeller_message("survivors", SurvivorList, timeout_s=answer_s)
        survivors, dropped = self._check_survivors(survivors_msg, committed)
        await self._post(
            "consistency",
            ConsistencySignature(
                **self._fields(), pod=self.me, survivors=sorted(survivors), dropped=sorted(dropped)
            ),
        )
        views = await self._check_consistency(survivors, dropped, neighbours, graph.threshold, timeout_s=stage_s)

        from pod_agent.secagg import UnmaskAnswer, confirmed_owners, unmask_answer, unmask_request

        # The round's lists cut down to this pod's neighbourhood: it answers for nobody else.
        request = unmask_request(self.me, graph=graph, survivors=survivors, dropped=dropped)
        try:
            answer = unmask_answer(
                held, me=self.me, graph=graph, survivors=request.survivors, dropped=request.dropped
            )
        except SecAggError as exc:
            raise TaskFailed(FailureCode.UNMASK_REFUSED.value, str(exc)) from exc
        confirmed = confirmed_owners(graph, views, me=self.me)
        unconfirmed = sorted((survivors | dropped) - confirmed)
        if unconfirmed:
            _log.info("secure round: no answer about %s, whose status too few of their neighbours signed", unconfirmed)
        answer = UnmaskAnswer(
            self_mask_shares={k: v for k, v in answer.self_mask_shares.items() if k in confirmed},
            mask_key_shares={k: v for k, v in answer.mask_key_shares.items() if k in confirmed},
        )
        await self._post(
            "unmask",
            UnmaskShares(
                **self._fields(), pod=self.me,
                self_mask_shares={k: _b64(v.data) for k, v in sorted(answer.self_mask_shares.items())},
                mask_key_shares={k: _b64(v.data) for k, v in sorted(answer.mask_key_shares.items())},
            ),
        )
        return RoundOutput(blob_path=blob_path, blob=blob, n_clipped=encoded.n_clipped)

    # -- the checks --------------------------------------------------------------------------

    def _neighbourhood(self, roster: AdvertRoster) -> NeighbourGraph:
        """The round's graph as this pod may know it: the roster's entries (addressed here, as
        ``_modeller_message`` checked), each proven against the signed root, must be exactly this pod's
        neighbourhood as the signed task alone places it."""
        from pod_agent.secagg import cohort_graph

        names: dict[int, str] = {}
        for proof in roster.members:
            self._proven(proof)
            if proof.index in names:
                raise TaskFailed(
                    FailureCode.BAD_ROUND_MESSAGE.value, f"the roster shows cohort entry {proof.index} twice"
                )
            names[proof.index] = proof.entry.pod
        mine = [index for index, name in names.items() if name == self.me]
        if not mine:
            raise TaskFailed(FailureCode.NOT_IN_ROUND.value, "the roster leaves out this pod's own cohort entry")
        try:
            graph = cohort_graph(
                names, size=self.task.cohort.size, cohort_root=self.task.cohort.root, task_id=self.task.task_id,
                round_index=self.round,
            )
        except SecAggError as exc:
            raise TaskFailed(FailureCode.BAD_ROUND_MESSAGE.value, f"the roster's entries: {exc}") from exc
        expected = {mine[0], *graph.neighbour_indices(mine[0])}
        stray = sorted(set(names) - expected)
        if stray:
            raise TaskFailed(
                FailureCode.ROSTER_NOT_NEIGHBOUR.value,
                f"the roster shows cohort entries {stray[:8]} ({[names[i][:64] for i in stray[:8]]}), which the "
                f"signed task's ring does not place next to this pod (entry {mine[0]}): the modeller placed it",
            )
        missing = sorted(expected - set(names))
        if missing:
            raise TaskFailed(
                FailureCode.ROSTER_INCOMPLETE.value,
                f"the roster leaves out cohort entries {missing[:8]}, neighbours of this pod on the signed ring",
            )
        return graph

    def _check_adverts(
        self, roster: AdvertRoster, mine: KeyAdvertisement, graph: NeighbourGraph
    ) -> dict[str, KeyAdvertisement]:
        """Every forwarded advert from a pod of the roster's (proven) neighbourhood and verified under the
        owner's pinned key for its entry, for this task and round; this pod's own unchanged."""
        entries = {proof.entry.pod: proof for proof in roster.members}
        adverts: dict[str, KeyAdvertisement] = {}
        for envelope in roster.adverts:
            claimed = str(envelope.payload.get("pod"))
            proof = entries.get(claimed)
            if proof is None:
                raise TaskFailed(
                    FailureCode.ROSTER_NOT_NEIGHBOUR.value,
                    f"the roster forwards an advert for {claimed[:64]!r}, which is not in this pod's neighbourhood",
                )
            key = self._member_key(claimed, proof)
            if claimed in adverts:
                raise TaskFailed(
                    FailureCode.BAD_ADVERTISEMENT.value, f"the roster forwards two adverts for {claimed!r}"
                )
            try:
                advert = open_envelope(envelope, KeyAdvertisement, key)
            except ProtocolError as exc:
                raise TaskFailed(
                    FailureCode.BAD_ADVERTISEMENT.value,
                    f"the advert forwarded for {claimed!r} does not verify under its pinned key: {exc}",
                ) from exc
            if advert.pod != claimed or advert.task_id != self.task.task_id or advert.round != self.round:
                raise TaskFailed(
                    FailureCode.BAD_ADVERTISEMENT.value,
                    f"the advert forwarded for {claimed!r} is for task {advert.task_id} round {advert.round}",
                )
            adverts[claimed] = advert
            self.cohort[claimed] = key
        if adverts.get(self.me) != mine:
            raise TaskFailed(
                FailureCode.NOT_IN_ROUND.value, "the roster leaves out (or alters) this pod's own advertisement"
            )
        keys = [a.c_public for a in adverts.values()] + [a.s_public for a in adverts.values()]
        if len(set(keys)) != len(keys):
            raise TaskFailed(FailureCode.BAD_ADVERTISEMENT.value, "two adverts of the roster share a public key")
        return adverts

    def _proven(self, proof: CohortProof) -> None:
        """ROSTER_OUTSIDE_COHORT unless ``proof`` leads to the signed task's cohort root."""
        try:
            check_inclusion(self.task.cohort, proof)
        except ProtocolError as exc:
            raise TaskFailed(
                FailureCode.ROSTER_OUTSIDE_COHORT.value,
                f"the roster shows an entry for {proof.entry.pod[:64]!r} outside the signed task's cohort: {exc}",
            ) from exc

    def _member_key(self, claimed: str, proof: CohortProof) -> PublicKey:
        """The pinned key of a roster member whose cohort entry ``proof`` (proven by ``_neighbourhood``) names."""
        key = self.ctx.peers.key_for(claimed, proof.entry.key_id)
        if key is None:
            raise TaskFailed(
                FailureCode.UNKNOWN_PEER.value,
                f"roster member {claimed[:64]!r} is not a peer this pod trusts under key {proof.entry.key_id[:16]} "
                "(privacy.peers)",
            )
        return key

    def _check_survivors(
        self, message: SurvivorList, committed: frozenset[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        survivors, dropped = frozenset(message.survivors), frozenset(message.dropped)
        if len(survivors) != len(message.survivors) or len(dropped) != len(message.dropped):
            raise TaskFailed(FailureCode.UNMASK_REFUSED.value, "the survivor list names a pod twice")
        if survivors & dropped:
            raise TaskFailed(
                FailureCode.UNMASK_REFUSED.value,
                f"pods {sorted(survivors & dropped)} are named both surviving and dropped",
            )
        if not (survivors | dropped) <= committed:
            raise TaskFailed(FailureCode.UNMASK_REFUSED.value, "the survivor list names pods that were not committed")
        if self.me not in survivors:
            raise TaskFailed(FailureCode.NOT_IN_ROUND.value, "the modeller counts this pod's masked input as dropped")
        return survivors, dropped

    async def _check_consistency(
        self, survivors: frozenset[str], dropped: frozenset[str], neighbours: frozenset[str], threshold: int,
        *, timeout_s: float,
    ) -> dict[str, SurvivorView]:
        """Wait (bounded) for the surviving neighbours' signed lists: each one present must verify under its
        pinned key and agree with ours on every pod both lists name; at least ``threshold`` of the
        neighbourhood must have signed. Returns the signed views by signer, this pod's included."""
        from pod_agent.secagg import SurvivorView

        mine = SurvivorView(survivors, dropped)
        waiting_for = (neighbours & survivors) | {self.me}
        deadline = time.monotonic() + timeout_s
        views: dict[str, SurvivorView] = {self.me: mine}
        count = 0
        while True:
            reply = await self._get("consistency", after=count, deadline=deadline)
            count = reply.count
            for envelope in reply.messages:
                sender = _peek_pod(envelope)
                # Only neighbours' lists count: a stranger naming this pod shows it nothing it can check.
                if sender not in waiting_for or sender in views:
                    continue
                message = self._open(envelope, ConsistencySignature, self.cohort[sender], what="consistency signature")
                view = SurvivorView(frozenset(message.survivors), frozenset(message.dropped))
                if message.pod != sender or mine.conflicts(view):
                    raise TaskFailed(
                        FailureCode.INCONSISTENT_SURVIVORS.value,
                        f"neighbour {sender!r} was shown another survivor list than this pod: "
                        f"{sorted(mine.conflicts(view))[:8]} differ",
                    )
                views[sender] = view
            if set(views) >= waiting_for:
                return views
            if time.monotonic() >= deadline:
                break
        if len(views) < threshold:
            raise TaskFailed(
                FailureCode.INCONSISTENT_SURVIVORS.value,
                f"only {len(views)} of the neighbourhood confirmed the survivor list (threshold {threshold})",
            )
        return views

    # -- release ---------------------------------------------------------------------------------

    async def _release(
        self, encoded: EncodedUpdate, blob_path: Path, common: Mapping[str, Any], committed: frozenset[str]
    ) -> BlobRef:
        """Mask, record the release (the one-release rule), then upload and announce the masked vector."""
        from pod_agent.secagg import mask_input, vector_to_bytes

        self.on_stage("masking")
        try:
            await asyncio.to_thread(
                mask_input, encoded.vector, self.secrets, committed=sorted(committed), **common
            )
        except SecAggError as exc:
            raise TaskFailed(FailureCode.SECAGG_ERROR.value, str(exc)) from exc
        self.on_stage("masked")
        data = vector_to_bytes(encoded.vector)
        blob = BlobRef(
            sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
            encoding="secagg-u32" if self.params.modulus_bits == 32 else "secagg-u64",
        )
        try:
            await asyncio.to_thread(
                self.ctx.state.record_release, starting_point(self.task), task_id=self.task.task_id,
                now=int(time.time()),
            )
        except AlreadyReleased as exc:
            raise TaskFailed(FailureCode.ALREADY_RELEASED.value, str(exc)) from exc
        except StateError as exc:
            raise TaskFailed(FailureCode.INTERNAL_ERROR.value, f"the release could not be recorded: {exc}") from exc
        await asyncio.to_thread(blob_path.write_bytes, data)
        await self._count("masked", len(data))
        deadline = time.monotonic() + self.params.stage_timeout_s
        await self._retrying(lambda: self.link.put_blob(blob_path, blob.sha256), deadline=deadline, what="masked blob")
        await self._post("masked", MaskedInput(**self._fields(), pod=self.me, blob=blob))
        self.on_stage("uploaded")
        return blob

    def _decrypt(self, received: Mapping[str, bytes], common: Mapping[str, Any]) -> dict[str, HeldShares]:
        from pod_agent.secagg import decrypt_shares

        return decrypt_shares(self.secrets, ciphertexts=dict(received), **common)

    # -- hub traffic ---------------------------------------------------------------------------

    async def _count(self, channel: Literal["masked", "round"], nbytes: int) -> None:
        """Count what is about to leave for the audit export, before it may leave."""
        try:
            await asyncio.to_thread(self.ctx.state.add_egress, self.task.task_id, channel, nbytes)
        except StateError as exc:
            raise TaskFailed(
                FailureCode.INTERNAL_ERROR.value, f"what the round sends could not be counted: {exc}"
            ) from exc

    async def _post(self, stage: Stage, message: RoundMessage) -> None:
        body = envelope_bytes(sign_envelope(message, self.ctx.key))
        await self._count("round", len(body))
        path = round_path(self.task.task_id, self.round, stage)
        deadline = time.monotonic() + self.params.stage_timeout_s
        await self._retrying(lambda: self.link.round_post(path, body), deadline=deadline, what=f"{stage} message")

    async def _get(self, stage: Stage, *, after: int, deadline: float) -> RoundMessages:
        """One long poll for ``stage``; a reply of the wrong shape is bad_round_message (``_retrying``). A hub
        that answers at once with nothing new is asked again only after RETRY_S, so it cannot make the pod spin."""
        path = round_path(self.task.task_id, self.round, stage)
        wait_s = max(0.0, min(POLL_S, deadline - time.monotonic()))
        asked = time.monotonic()
        reply = await self._retrying(
            lambda: self.link.round_get(path, after=after, wait_s=wait_s), deadline=deadline, what=f"{stage} poll"
        )
        if reply.count <= after and time.monotonic() - asked < min(RETRY_S, wait_s):
            await asyncio.sleep(max(0.0, min(RETRY_S, deadline - time.monotonic())))
        return reply

    async def _retrying(self, call: Callable[[], Awaitable[_R]], *, deadline: float, what: str) -> _R:
        """``call()`` until it succeeds; a transient hub failure is retried until ``deadline``. A hub that
        refuses the call, or answers it with a reply of the wrong shape, fails the round at once: asking the
        same hub the same question again would only spend the deadline."""
        while True:
            try:
                return await call()
            except HubRejected as exc:
                raise TaskFailed(FailureCode.BAD_ROUND_MESSAGE.value, f"the hub refused the {what}: {exc}") from exc
            except HubMisbehaved as exc:
                raise TaskFailed(FailureCode.BAD_ROUND_MESSAGE.value, f"the hub's answer to the {what}: {exc}") from exc
            except (HubError, OSError, TimeoutError) as exc:
                if time.monotonic() + RETRY_S >= deadline:
                    raise TaskFailed(
                        FailureCode.ROUND_TIMEOUT.value, f"the {what} failed until the deadline: {exc}"
                    ) from exc
                _log.info("secure round: %s failed (%s); retrying", what, type(exc).__name__)
                await asyncio.sleep(RETRY_S)

    async def _modeller_message(self, stage: Stage, model: type[_M], *, timeout_s: float) -> _M:
        """The modeller's one message of ``stage``, verified under the modeller's key; round_timeout after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = await self._get(stage, after=0, deadline=deadline)
            if reply.messages:
                message = self._open(reply.messages[0], model, self.modeller, what=f"modeller's {stage} message")
                if isinstance(message, AddressedMessage) and message.to != self.me:
                    raise TaskFailed(
                        FailureCode.MISADDRESSED.value,
                        f"the modeller's {stage} message relayed here is addressed to {message.to[:64]!r}",
                    )
                return message
            if time.monotonic() >= deadline:
                raise TaskFailed(
                    FailureCode.ROUND_TIMEOUT.value, f"no {stage} message from the modeller in {timeout_s:g} s"
                )

    def _open(self, envelope: Envelope, model: type[_M], key: PublicKey, *, what: str) -> _M:
        try:
            message = open_envelope(envelope, model, key)
        except (ProtocolError, ValidationError) as exc:
            raise TaskFailed(FailureCode.BAD_ROUND_MESSAGE.value, f"{what} does not verify: {exc}") from exc
        if message.task_id != self.task.task_id or message.round != self.round:
            raise TaskFailed(
                FailureCode.BAD_ROUND_MESSAGE.value,
                f"{what} is for task {message.task_id} round {message.round}, not this one",
            )
        return message

    async def _my_ciphertexts(self, senders: frozenset[str], *, timeout_s: float) -> dict[str, bytes]:
        """The ciphertexts each committed neighbour addressed to this pod (the AEAD authenticates them)."""
        deadline = time.monotonic() + timeout_s
        count = 0
        while True:
            reply = await self._get("shares", after=count, deadline=deadline)
            count, shares = reply.count, reply.shares
            if senders <= set(shares):
                try:
                    return {name: b64decode_strict(str(shares[name]), what=f"{name}'s ciphertext") for name in senders}
                except ProtocolError as exc:
                    raise TaskFailed(FailureCode.BAD_ROUND_MESSAGE.value, "a ciphertext is not base64") from exc
            if time.monotonic() >= deadline:
                raise TaskFailed(
                    FailureCode.ROUND_TIMEOUT.value,
                    f"no shares from committed neighbours {sorted(senders - set(shares))} in {timeout_s:g} s",
                )


def _encrypt(secrets: RoundSecrets, common: Mapping[str, Any]) -> dict[str, bytes]:
    from pod_agent.secagg import encrypt_shares

    try:
        return encrypt_shares(secrets, **common)
    except SecAggError as exc:
        raise TaskFailed(FailureCode.SECAGG_ERROR.value, str(exc)) from exc


def _peek_pod(envelope: Envelope) -> str:
    """The pod a relayed envelope claims to be from (checked by its signature before it counts)."""
    return str(envelope.payload.get("pod", ""))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


__all__ = [
    "PodRoundContext",
    "RoundLink",
    "RoundOutput",
    "check_unreleased",
    "run_secure_round",
    "starting_point",
]
