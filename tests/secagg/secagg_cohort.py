"""Simulated SecAgg+ rounds in one process: every pod's math, no hub, with chosen dropouts."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pod_agent.protocol.messages import SecAggParams
from pod_agent.secagg import (
    AggregateResult,
    EncodedUpdate,
    HeldShares,
    Layout,
    NeighbourGraph,
    PeerKeys,
    RoundSecrets,
    UnmaskAnswer,
    aggregate_masked,
    decrypt_shares,
    encode_update,
    encrypt_shares,
    mask_input,
    neighbour_graph,
    sum_vectors,
    unmask_answer,
    unmask_request,
    unmask_sum,
)

TASK_A = "3f1c2a4e-1b2c-4d5e-8f90-a1b2c3d4e5f6"
TASK_B = "9e8d7c6b-5a49-4382-9170-fedcba987654"

# chi-square critical value for 255 degrees of freedom at p = 0.001
CHI2_255_P001 = 330.5


def chi_square_256(values: np.ndarray) -> float:
    counts = np.bincount(values.astype(np.int64), minlength=256)
    expected = values.size / 256
    return float(np.sum((counts - expected) ** 2) / expected)


def names(n: int) -> list[str]:
    return [f"pod-{i:02d}" for i in range(n)]


def make_params(n: int, **overrides: object) -> SecAggParams:
    fields: dict[str, object] = {"prime_q": 2**40, "precision": 2**20, "num_workers": n}
    fields.update(overrides)
    return SecAggParams.model_validate(fields)


def plain_mean(updates: Mapping[str, Mapping[str, np.ndarray]], rows: Mapping[str, int] | None = None
               ) -> dict[str, np.ndarray]:
    weights = {name: (rows or {}).get(name, 1) for name in updates}
    total = sum(weights.values())
    first = next(iter(updates.values()))
    return {key: sum(updates[n][key].astype(np.float64) * weights[n] for n in updates) / total for key in first}


def assert_within(mean: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], tolerance: float) -> None:
    assert mean.keys() == expected.keys()
    for key in expected:
        assert mean[key].shape == expected[key].shape
        assert float(np.max(np.abs(mean[key].astype(np.float64) - expected[key]))) <= tolerance


def decode_plain(encoded: Mapping[str, EncodedUpdate], params: SecAggParams) -> AggregateResult:
    """Sum and decode unmasked vectors: the fixed-point arithmetic without the masks."""
    layout = next(iter(encoded.values())).layout
    return aggregate_masked([e.vector for e in encoded.values()], layout=layout, params=params)


@dataclass
class SimulatedRound:
    """One task round among ``members``; each stage runs for the pods still in it."""

    members: Sequence[str]
    task_id: str = TASK_A
    round_index: int = 0
    graph: NeighbourGraph = field(init=False)
    secrets: dict[str, RoundSecrets] = field(init=False)
    peers: dict[str, PeerKeys] = field(default_factory=dict)
    boxes: dict[str, dict[str, bytes]] = field(default_factory=dict)
    held: dict[str, dict[str, HeldShares]] = field(default_factory=dict)
    committed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.graph = neighbour_graph(self.members, task_id=self.task_id, round_index=self.round_index)
        self.secrets = {pod: RoundSecrets.generate() for pod in self.members}

    def advertise(self, pods: Collection[str]) -> None:
        self.peers = {p: PeerKeys(p, self.secrets[p].c_public_b64, self.secrets[p].s_public_b64) for p in pods}

    def share(self, pods: Collection[str]) -> None:
        self.boxes = {p: encrypt_shares(self.secrets[p], me=p, graph=self.graph, peers=self.peers,
                                        task_id=self.task_id, round_index=self.round_index) for p in pods}
        self.committed = sorted(pods)
        for pod in self.committed:
            inbox = {sender: boxes[pod] for sender, boxes in self.boxes.items() if pod in boxes}
            self.held[pod] = decrypt_shares(self.secrets[pod], me=pod, graph=self.graph, peers=self.peers,
                                            ciphertexts=inbox, task_id=self.task_id, round_index=self.round_index)

    def mask(self, encoded: EncodedUpdate, pod: str) -> npt.NDArray[np.unsignedinteger]:
        vector = encoded.vector.copy()
        mask_input(vector, self.secrets[pod], me=pod, graph=self.graph, peers=self.peers, committed=self.committed,
                   task_id=self.task_id, round_index=self.round_index)
        return vector

    def answers(self, survivors: Collection[str]) -> dict[str, UnmaskAnswer]:
        dropped = set(self.committed) - set(survivors)
        out = {}
        for pod in survivors:
            request = unmask_request(pod, graph=self.graph, survivors=survivors, dropped=dropped)
            out[pod] = unmask_answer(self.held[pod], me=pod, graph=self.graph, survivors=request.survivors,
                                     dropped=request.dropped)
        return out

    def unmask(self, masked: Mapping[str, npt.NDArray[np.unsignedinteger]], params: SecAggParams, layout: Layout,
               answers: Mapping[str, UnmaskAnswer]) -> npt.NDArray[np.unsignedinteger]:
        total = sum_vectors(list(masked.values()), layout=layout, params=params)
        return unmask_sum(total, graph=self.graph, peers=self.peers, committed=self.committed,
                          survivors=sorted(masked), answers=answers, task_id=self.task_id,
                          round_index=self.round_index)


def run_round(
    updates: Mapping[str, Mapping[str, np.ndarray]],
    params: SecAggParams,
    *,
    rows: Mapping[str, int] | None = None,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    metric_names: Sequence[str] = (),
    not_advertised: Collection[str] = (),
    not_committed: Collection[str] = (),
    not_masked: Collection[str] = (),
    task_id: str = TASK_A,
) -> AggregateResult:
    """A whole round: pods leave after the stage named (never advertise, advertise only, share only)."""
    sim = SimulatedRound(sorted(updates), task_id=task_id, round_index=params.round)
    advertised = [p for p in sim.members if p not in not_advertised]
    sim.advertise(advertised)
    sim.share([p for p in advertised if p not in not_committed])
    survivors = [p for p in sim.committed if p not in not_masked]
    encoded = {pod: encode_update(updates[pod], params=params, n_rows=(rows or {}).get(pod, 1),
                                  metrics=(metrics or {}).get(pod), metric_names=metric_names) for pod in survivors}
    masked = {pod: sim.mask(encoded[pod], pod) for pod in survivors}
    layout = encoded[survivors[0]].layout
    unmasked = sim.unmask(masked, params, layout, sim.answers(survivors))
    return aggregate_masked([unmasked], layout=layout, params=params, n_pods=len(survivors))
