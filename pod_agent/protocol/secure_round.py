"""Wire models of one SecAgg+ round (``"v": 2``), each signed and bound to a task and round.

Owns the shape of every message a secure train task exchanges after training, in
the order they are sent (the modeller is the aggregation server, the hub relays):

    advert       pod       KeyAdvertisement: fresh X25519 public keys for this task and round
    roster       modeller  AdvertRoster, one per pod: the cohort entries of its neighbourhood (its own and
                           its neighbours', each with its inclusion proof in the task's signed cohort) and
                           the signed adverts of those that advertised
    shares       pod       EncryptedShares: one AEAD ciphertext per neighbour
    committed    modeller  CommittedList, one per pod: its neighbourhood's members whose shares arrived (U2)
    masked       pod       MaskedInput: the masked vector's blob reference
    survivors    modeller  SurvivorList, one per pod: who of its committed neighbourhood masked, who dropped
    consistency  pod       ConsistencySignature: the survivor list this pod was shown, signed
    unmask       pod       UnmaskShares: self-mask shares for survivors, key shares for the dropped

Per pod, not per round: the modeller's messages name their addressee (``to``) and the hub hands each
only to it, and a pod reads only the consistency signatures whose lists name it (its neighbours'). So
what a pod receives in a round is O(k log n) bytes for degree k and cohort size n (k + 1 entries with
log2(n)-hash proofs, k adverts, lists of k names), never the cohort: the neighbourhood is computed from
the signed task alone (``pod_agent.secagg.graph``), and each pod checks it was shown exactly that.

Every payload names its ``stage``, so no message of one stage verifies as another's,
and carries ``task_id`` and ``round``, so none verifies in another task or round.
Signing is ``signing.py``; which checks a pod makes before it answers is
``pod_agent.agent.secure_round``; relaying is the hub's (``pod_agent.hub.round_routes``).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from pod_agent.config import PodName
from pod_agent.protocol.messages import BlobRef, CohortProof, Envelope, WireModel

Stage = Literal["advert", "roster", "shares", "committed", "masked", "survivors", "consistency", "unmask"]
STAGES: tuple[Stage, ...] = get_args(Stage)
# Who sends each stage: a cohort pod (its own message) or the task's modeller.
POD_STAGES: frozenset[Stage] = frozenset({"advert", "shares", "masked", "consistency", "unmask"})
MODELLER_STAGES: frozenset[Stage] = frozenset({"roster", "committed", "survivors"})
# What a pod may read: the modeller's messages, the ciphertexts addressed to it and the survivor-list
# signatures it compares. Other pods' adverts come through the roster; masked inputs and unmask answers
# are the modeller's alone (with them a pod could rebuild what the modeller rebuilds).
POD_READ_STAGES: frozenset[Stage] = MODELLER_STAGES | frozenset({"shares", "consistency"})
# The sender label of the modeller's messages at the hub (pod names cannot contain '@').
MODELLER_SENDER = "@modeller"
# A pod and its k neighbours (k = 40 at 10**6 pods, graph.default_degree): every list below is bounded by it.
MAX_NEIGHBOURHOOD = 64
# Bytes of one signed message, by stage: a roster holds a neighbourhood's entries with their proofs (~1.5 kB
# each at 10**6 pods) and adverts (~700 B each); shares and unmask answers hold one entry per neighbour; the
# rest are a few lists of names.
MAX_STAGE_BYTES: dict[Stage, int] = {
    "advert": 4096,
    "roster": 4096 * MAX_NEIGHBOURHOOD,
    "shares": 512 * MAX_NEIGHBOURHOOD,
    "committed": 80 * MAX_NEIGHBOURHOOD,
    "masked": 4096,
    "survivors": 160 * MAX_NEIGHBOURHOOD,
    "consistency": 160 * MAX_NEIGHBOURHOOD,
    "unmask": 512 * MAX_NEIGHBOURHOOD,
}

TaskId = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
# Raw X25519 public key, base64 (32 bytes -> 44 characters).
X25519B64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]
Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=4096)]
PodList = Annotated[list[PodName], Field(max_length=MAX_NEIGHBOURHOOD)]


class RoundMessage(WireModel):
    """Fields every message of a round carries."""

    # 2: per-pod rosters and lists on the Feistel ring, masks from counter block 2. A pod or modeller of
    # version 1 would place the ring and draw the masks otherwise, so mixing versions must fail the
    # message check, not yield a sum whose masks do not cancel.
    v: Literal[2] = 2
    task_id: TaskId
    round: int = Field(ge=0)


class KeyAdvertisement(RoundMessage):
    """A pod's two fresh public keys for this task and round, signed by its identity key."""

    stage: Literal["advert"] = "advert"
    pod: PodName
    c_public: X25519B64  # encrypts the shares sent to neighbours
    s_public: X25519B64  # agrees the pairwise masks

    @model_validator(mode="after")
    def _two_keys(self) -> KeyAdvertisement:
        if self.c_public == self.s_public:
            raise ValueError("c_public and s_public must be two different keys")
        return self


class AddressedMessage(RoundMessage):
    """A modeller's message for one pod (``to``): the hub hands it to that pod only."""

    to: PodName


class AdvertRoster(AddressedMessage):
    """What pod ``to`` is shown of the round: the cohort entries of its neighbourhood, each with its proof
    (``members``: its own and its k neighbours'), and the signed adverts of those that advertised. The pod
    checks each proof against the signed root, that the entries are exactly its neighbourhood, and each
    advert under its pod's pinned key."""

    stage: Literal["roster"] = "roster"
    members: Annotated[list[CohortProof], Field(min_length=1, max_length=MAX_NEIGHBOURHOOD)]
    adverts: Annotated[list[Envelope], Field(max_length=MAX_NEIGHBOURHOOD)]


class EncryptedShares(RoundMessage):
    """One ciphertext per neighbour (receiver -> base64); the hub hands each receiver its own."""

    stage: Literal["shares"] = "shares"
    pod: PodName
    ciphertexts: Annotated[dict[PodName, Base64], Field(max_length=MAX_NEIGHBOURHOOD)]


class CommittedList(AddressedMessage):
    """U2 within pod ``to``'s neighbourhood: the members whose shares the modeller received; only they mask
    with each other."""

    stage: Literal["committed"] = "committed"
    committed: PodList


class MaskedInput(RoundMessage):
    """The pod's masked vector, uploaded as a blob before this is posted."""

    stage: Literal["masked"] = "masked"
    pod: PodName
    blob: BlobRef


class SurvivorList(AddressedMessage):
    """U3 within pod ``to``'s committed neighbourhood and those of it that dropped before masking; the two
    never overlap."""

    stage: Literal["survivors"] = "survivors"
    survivors: PodList
    dropped: PodList


class ConsistencySignature(RoundMessage):
    """The survivor list a pod was shown (its neighbourhood's), signed by its identity key for its neighbours
    to compare; the hub hands it to the pods it names."""

    stage: Literal["consistency"] = "consistency"
    pod: PodName
    survivors: PodList
    dropped: PodList


class UnmaskShares(RoundMessage):
    """A pod's one answer: self-mask shares of survivors, key shares of the dropped (owner -> base64)."""

    stage: Literal["unmask"] = "unmask"
    pod: PodName
    self_mask_shares: Annotated[dict[PodName, Base64], Field(max_length=MAX_NEIGHBOURHOOD)]
    mask_key_shares: Annotated[dict[PodName, Base64], Field(max_length=MAX_NEIGHBOURHOOD)]

    @model_validator(mode="after")
    def _never_both(self) -> UnmaskShares:
        both = sorted(set(self.self_mask_shares) & set(self.mask_key_shares))
        if both:
            raise ValueError(f"both shares of {both}: one pod's self mask and mask key would reveal its input")
        return self


STAGE_MODELS: dict[Stage, type[RoundMessage]] = {
    "advert": KeyAdvertisement,
    "roster": AdvertRoster,
    "shares": EncryptedShares,
    "committed": CommittedList,
    "masked": MaskedInput,
    "survivors": SurvivorList,
    "consistency": ConsistencySignature,
    "unmask": UnmaskShares,
}


def addressed_sender(to: str) -> str:
    """The hub's sender label of the modeller's message addressed to pod ``to`` (one per pod and stage)."""
    return f"{MODELLER_SENDER}>{to}"


def round_path(task_id: str, round_index: int, stage: Stage) -> str:
    """The hub route of a stage's messages (POST one, GET the stage's)."""
    return f"/v1/secagg/{task_id}/{round_index}/{stage}"


__all__ = [
    "MAX_NEIGHBOURHOOD",
    "MAX_STAGE_BYTES",
    "MODELLER_SENDER",
    "MODELLER_STAGES",
    "POD_READ_STAGES",
    "POD_STAGES",
    "STAGES",
    "STAGE_MODELS",
    "AddressedMessage",
    "AdvertRoster",
    "CommittedList",
    "ConsistencySignature",
    "EncryptedShares",
    "KeyAdvertisement",
    "MaskedInput",
    "RoundMessage",
    "Stage",
    "SurvivorList",
    "UnmaskShares",
    "addressed_sender",
    "round_path",
]
