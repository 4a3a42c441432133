"""Who masks with whom and who holds whose shares: a k-regular graph no party chooses, each pod's part found alone.

Owns ``RingPlacement``, ``NeighbourGraph``, ``cohort_graph`` and ``neighbour_graph``. SecAgg+
(Bell, Bonawitz, Gascon, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020) replaces the complete graph of SecAgg (Bonawitz et
al., CCS 2017) with the Harary graph H(n, k) laid over a random permutation of the clients:
on a ring of the n pods in permuted order, each pod is joined to the k/2 pods on either side.
A pod exchanges pairwise masks and secret shares with its k neighbours only, so its cost
grows with k, not n.

Placement. The ring is laid over the task's signed cohort (``protocol.cohort``: n entries
sorted by pod name, committed by a Merkle root), not over the pods that turned up: entry i
sits at ring position P(i), where P is a keyed pseudo-random permutation of [0, n) (a
ten-round balanced Feistel network over the smallest even bit width holding n - 1, round
function BLAKE2b keyed by the seed, with cycle walking back into [0, n)). The seed is
SHA-256 over (task id, round, cohort root, n), all in the signed task, so every pod and
the modeller derive the same ring, a new round or cohort gives a new one, and neither the
hub nor the modeller can place a pod next to pods it controls short of re-signing the task
with another id (see below). P and its inverse cost O(1) each, so a pod finds its
neighbours' cohort indices (P^-1(P(i) +- 1..k/2)) without enumerating the cohort: it then
needs only those k entries, each with its inclusion proof, O(k log n) bytes in all, where
the Fisher-Yates shuffle over member names this replaces needed every name. A cohort pod
that never advertised keys is simply absent from its neighbours' rounds (as if dropped
before sharing): the graph does not depend on who turned up, so nobody can reshape it by
withholding or suppressing adverts.

A modeller chooses the task id, so it could re-sign a task under many ids until the ring
puts its sybils around a victim; the Fisher-Yates ring had the same weakness. Removing it
needs randomness the modeller cannot choose (each pod committing to a contribution before
the ring is fixed), which is not built.

Degree. Bell et al. prove k = O(log n) suffices and pick k numerically for a target
corruption fraction, dropout fraction and 2**-40 failure bound; in their semi-malicious
example (10**4 clients, 5 % corrupt, 5 % dropouts) a client talks to 3 % of the others.
This module uses k = n - 1 (the complete graph, Bonawitz's SecAgg) up to
``COMPLETE_UP_TO`` = 17 pods, then k = max(16, 2 * ceil(log2 n)), even (20 at n = 1000,
28 at 10**4, 40 at 10**6). That is a cost-driven choice, not their bound. The
failures that matter: the honest pods still in the sum split into parts whose sums the
modeller learns separately, which on this ring takes two runs of k/2 consecutive places
that are all corrupt or dropped; with a fraction f of such pods one run has probability
about n * f**(k/2) (10**-7 per round for n = 1000, f = 0.1, k = 20, but 2 % for f = 1/3)
and two about half its square; or t of a pod's k neighbours are corrupt and rebuild its
secrets alone (binomial tail: 7 * 10**-7 a pod for k = 20, t = 11, f = 0.1, so about
10**-3 that some pod of 1000 is exposed in a round). Cohort pods that never advertise
count as dropped here. Cohorts expecting that many corrupt or lost pods pass a larger
``degree``.

Threshold. Each pod's secrets are split into k + 1 shares, one per neighbour plus one the
pod keeps itself (share index k + 1, so that its own survival counts toward rebuilding
its self-mask, as in SecAgg where every client holds a share of its own secrets), and
t = floor((k + 1) / 2) + 1 of them rebuild a secret: the smallest majority. Any two sets
of t holders overlap, so the modeller cannot collect t self-mask shares and t mask-key
shares of the same pod from honest holders, each of which answers one kind per pod
(``plus.unmask_answer``); fewer than t corrupt neighbours learn nothing; and a round
survives as long as every committed pod keeps t surviving holders: of it and its k
neighbours at most k + 1 - t are gone (2 of 5 in a complete graph of 5; 8 of 17 for
k = 16, so 8 consecutive ring places may drop but not 9). A neighbour's share index is
its ring offset from the owner (-k/2..-1, 1..k/2 numbered 1..k; forward offsets 1..n - 1
in a complete graph), so a holder knows its index from the two positions alone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pod_agent.errors import SecAggError

COMPLETE_UP_TO = 17
MIN_SPARSE_DEGREE = COMPLETE_UP_TO - 1
_SEED_LABEL = b"pod-agent/secagg/v2/neighbour-graph"
# Luby-Rackoff needs 4 rounds for a strong PRP from a PRF; the small domains here (from 4 values) get more.
_FEISTEL_ROUNDS = 10


@dataclass(frozen=True)
class RingPlacement:
    """A keyed pseudo-random permutation of the cohort indices [0, size): index <-> ring position in O(1).

    A balanced Feistel network on 2h bits (2**(2h) < 4 * size) with cycle walking: a value
    that lands outside [0, size) is permuted again, so fewer than four passes are expected.
    """

    seed: bytes = field(repr=False)
    size: int
    _half_bits: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size < 2:
            raise SecAggError(f"a ring needs at least 2 places; got {self.size}")
        bits = max(2, (self.size - 1).bit_length())
        object.__setattr__(self, "_half_bits", (bits + 1) // 2)

    def position(self, index: int) -> int:
        """The ring position of cohort entry ``index``."""
        return self._walk(self._inside(index, "cohort index"), forward=True)

    def index_at(self, position: int) -> int:
        """The cohort index of the entry at ring ``position``."""
        return self._walk(self._inside(position, "ring position"), forward=False)

    def _inside(self, value: int, what: str) -> int:
        if not 0 <= value < self.size:
            raise SecAggError(f"{what} {value} is outside a cohort of {self.size}")
        return value

    def _walk(self, value: int, *, forward: bool) -> int:
        while True:
            value = self._feistel(value, forward=forward)
            if value < self.size:
                return value

    def _feistel(self, value: int, *, forward: bool) -> int:
        h = self._half_bits
        left, right = value >> h, value & ((1 << h) - 1)
        if forward:
            for r in range(_FEISTEL_ROUNDS):
                left, right = right, left ^ self._round(r, right)
        else:
            for r in reversed(range(_FEISTEL_ROUNDS)):
                left, right = right ^ self._round(r, left), left
        return (left << h) | right

    def _round(self, r: int, half: int) -> int:
        data = bytes([r]) + half.to_bytes(8, "big")
        digest = hashlib.blake2b(data, key=self.seed, digest_size=8).digest()
        return int.from_bytes(digest, "big") & ((1 << self._half_bits) - 1)


@dataclass(frozen=True)
class NeighbourGraph:
    """The round's graph as one party sees it: the placement, the degree k and the names it knows.

    ``names`` maps cohort index -> pod name for the entries this party holds: the whole
    cohort on the modeller, a pod's own closed neighbourhood on a pod. ``members`` (the
    known names sorted) and ``threshold`` (the smallest majority of k + 1) are derived,
    never passed, so no graph can carry a t that lets two disjoint sets of holders rebuild
    a pod's two secrets.
    """

    degree: int
    placement: RingPlacement = field(repr=False)
    names: Mapping[int, str] = field(repr=False, compare=False)
    members: tuple[str, ...] = field(init=False, compare=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _position: dict[str, int] = field(init=False, repr=False, compare=False)
    _at_position: dict[int, str] = field(init=False, repr=False, compare=False)
    _graph_digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.placement.size
        if not (self.degree == n - 1 or (2 <= self.degree < n - 1 and self.degree % 2 == 0)):
            raise SecAggError(
                f"degree = {self.degree} for {n} pods: use n - 1 = {n - 1} or an even number from 2 to {n - 2}"
            )
        index: dict[str, int] = {}
        position: dict[str, int] = {}
        for i, name in sorted(self.names.items()):
            if name in index:
                raise SecAggError(f"the cohort names {name!r} more than once; each pod takes part once")
            index[name], position[name] = i, self.placement.position(i)
        object.__setattr__(self, "members", tuple(sorted(index)))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_position", position)
        object.__setattr__(self, "_at_position", {p: name for name, p in position.items()})
        parts = [_SEED_LABEL, b"graph", self.placement.seed, str(n).encode(), str(self.degree).encode()]
        object.__setattr__(self, "_graph_digest", _digest(parts))

    @property
    def size(self) -> int:
        """n, the signed cohort's size: every entry has a ring place, whether or not it takes part."""
        return self.placement.size

    @property
    def threshold(self) -> int:
        """t = floor((k + 1) / 2) + 1 of the k + 1 shares rebuild a secret (module docstring)."""
        return self.holders // 2 + 1

    @property
    def holders(self) -> int:
        """Shares made of each pod's secrets: one per neighbour and its own."""
        return self.degree + 1

    @property
    def ring(self) -> tuple[str, ...]:
        """Every name in ring order; only a party that knows the whole cohort has it."""
        if len(self._at_position) != self.size:
            raise SecAggError(f"this party knows {len(self._at_position)} of the {self.size} cohort entries")
        return tuple(self._at_position[p] for p in range(self.size))

    def index_of(self, pod: str) -> int:
        """The cohort index of a known pod."""
        return self._index[self._known(pod)]

    def neighbour_indices(self, index: int) -> tuple[int, ...]:
        """The cohort indices of entry ``index``'s k neighbours, in share-index order (1..k)."""
        at = self.placement.position(index)
        return tuple(self.placement.index_at((at + step) % self.size) for step in self._offsets())

    def neighbours(self, pod: str) -> tuple[str, ...]:
        """The k pods ``pod`` masks with and shares its secrets to, sorted; never ``pod`` itself."""
        at = self._position[self._known(pod)]
        out = []
        for step in self._offsets():
            name = self._at_position.get((at + step) % self.size)
            if name is None:
                raise SecAggError(
                    f"this party does not know the neighbour at ring offset {step} of {pod!r}: it holds the "
                    "cohort entries of its own neighbourhood only"
                )
            out.append(name)
        return tuple(sorted(out))

    def adjacent(self, a: str, b: str) -> bool:
        """Whether ``a`` is ``b`` or one of its neighbours (known pods, by their ring positions alone)."""
        step = (self._position[self._known(a)] - self._position[self._known(b)]) % self.size
        return self.degree == self.size - 1 or min(step, self.size - step) <= self.degree // 2

    def share_index(self, holder: str, owner: str) -> int:
        """The x-coordinate of the share of ``owner``'s secrets that ``holder`` keeps.

        1..k for the owner's neighbours by ring offset (module docstring), k + 1 for the owner itself.
        """
        owner_at = self._position[self._known(owner)]
        if holder == owner:
            return self.holders
        step = (self._position[self._known(holder)] - owner_at) % self.size
        if self.degree == self.size - 1:
            return step
        half = self.degree // 2
        if 1 <= step <= half:
            return half + step
        if self.size - half <= step:
            return half - (self.size - step) + 1
        raise SecAggError(
            f"pod {holder!r} is not a neighbour of {owner!r} in this round's graph, so it holds no share of "
            f"{owner!r}'s secrets"
        )

    def digest(self) -> bytes:
        """SHA-256 of the placement seed, size and degree: binds derived keys to this exact graph."""
        return self._graph_digest

    def _offsets(self) -> Sequence[int]:
        if self.degree == self.size - 1:
            return range(1, self.size)
        half = self.degree // 2
        return [*range(-half, 0), *range(1, half + 1)]

    def _known(self, pod: str) -> str:
        if pod not in self._position:
            raise SecAggError(
                f"pod {pod!r} is not in the round's cohort as this party knows it ({len(self.members)} of "
                f"{self.size} entries): the task did not name it, or it is not in this neighbourhood"
            )
        return pod


def cohort_graph(
    names: Mapping[int, str], *, size: int, cohort_root: str, task_id: str, round_index: int,
    degree: int | None = None,
) -> NeighbourGraph:
    """The graph of the task's signed cohort (root and size), as a party knowing ``names`` (index -> pod) sees it.

    ``degree`` overrides the default k (see the module docstring); it must be n - 1 or an
    even number in 2..n - 2, and every party must pass the same value.
    """
    if size < 2:
        raise SecAggError(
            f"a secure-aggregation round needs at least 2 pods; {size} would send its update in clear"
        )
    seed = _digest([_SEED_LABEL, task_id.encode(), str(round_index).encode(), cohort_root.encode(),
                    str(size).encode()])
    k = default_degree(size) if degree is None else degree
    return NeighbourGraph(degree=k, placement=RingPlacement(seed=seed, size=size), names=dict(names))


def neighbour_graph(
    members: Sequence[str], *, task_id: str, round_index: int, degree: int | None = None
) -> NeighbourGraph:
    """The graph of a cohort given by its names (sorted, committed by a hash of them), everyone known.

    For simulations and benchmarks: a round run through the hub uses ``cohort_graph`` over the signed root.
    """
    names = sorted(members)
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise SecAggError(f"the cohort names {twice} more than once; each pod takes part once")
    root = _digest([_SEED_LABEL, b"names", *(name.encode() for name in names)]).hex()
    return cohort_graph(dict(enumerate(names)), size=len(names), cohort_root=root, task_id=task_id,
                        round_index=round_index, degree=degree)


def default_degree(n: int) -> int:
    """k for n pods: n - 1 up to COMPLETE_UP_TO pods, then max(16, 2 * ceil(log2 n))."""
    if n <= COMPLETE_UP_TO:
        return n - 1
    return max(MIN_SPARSE_DEGREE, 2 * math.ceil(math.log2(n)))


def _digest(parts: Sequence[bytes]) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()
