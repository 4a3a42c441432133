"""Who masks with whom and who holds whose shares: a k-regular graph no party chooses.

Owns ``NeighbourGraph`` and ``neighbour_graph``. SecAgg+ (Bell, Bonawitz, Gascon, Lepoint,
Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020)
replaces the complete graph of SecAgg (Bonawitz et al., CCS 2017) with the Harary graph
H(n, k) laid over a random permutation of the clients: on a ring of the n pods in
permuted order, each pod is joined to the k/2 pods on either side. A pod exchanges
pairwise masks and secret shares with its k neighbours only, so its cost grows with k,
not n.

The permutation is a Fisher-Yates shuffle driven by AES-256-CTR (``cryptography``)
keyed with SHA-256 over (task id, round, sorted member names), so every pod and the
modeller derive the same graph from the signed task alone, a new round or cohort gives a
new graph, and neither the hub nor the modeller can place a pod next to pods it controls.

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
10**-3 that some pod of 1000 is exposed in a round). Cohorts expecting that many
corrupt or lost pods pass a larger ``degree``.

Threshold. Each pod's secrets are split into k + 1 shares, one per neighbour plus one the
pod keeps itself (share index k + 1, so that its own survival counts toward rebuilding
its self-mask, as in SecAgg where every client holds a share of its own secrets), and
t = floor((k + 1) / 2) + 1 of them rebuild a secret: the smallest majority. Any two sets
of t holders overlap, so the modeller cannot collect t self-mask shares and t mask-key
shares of the same pod from honest holders, each of which answers one kind per pod
(``plus.unmask_answer``); fewer than t corrupt neighbours learn nothing; and a round
survives as long as every committed pod keeps t surviving holders: of it and its k
neighbours at most k + 1 - t are gone (2 of 5 in a complete graph of 5; 8 of 17 for
k = 16, so 8 consecutive ring places may drop but not 9).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pod_agent.errors import SecAggError

COMPLETE_UP_TO = 17
MIN_SPARSE_DEGREE = COMPLETE_UP_TO - 1
_SEED_LABEL = b"pod-agent/secagg/v1/neighbour-graph"


@dataclass(frozen=True)
class NeighbourGraph:
    """The round's graph: the ring order and degree k; the cohort and the share threshold t follow from them.

    ``members`` (the ring sorted) and ``threshold`` (the smallest majority of k + 1) are
    derived, never passed, so no graph can carry a t that lets two disjoint sets of
    holders rebuild a pod's two secrets.
    """

    degree: int
    ring: tuple[str, ...] = field(repr=False)
    members: tuple[str, ...] = field(init=False, compare=False)
    _position: dict[str, int] = field(init=False, repr=False, compare=False)
    _graph_digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(sorted(self.ring)))
        object.__setattr__(self, "_position", {pod: index for index, pod in enumerate(self.ring)})
        ring_parts = [_SEED_LABEL, b"graph", str(self.degree).encode(), *(pod.encode() for pod in self.ring)]
        object.__setattr__(self, "_graph_digest", _digest(ring_parts))

    @property
    def threshold(self) -> int:
        """t = floor((k + 1) / 2) + 1 of the k + 1 shares rebuild a secret (module docstring)."""
        return self.holders // 2 + 1

    @property
    def holders(self) -> int:
        """Shares made of each pod's secrets: one per neighbour and its own."""
        return self.degree + 1

    def neighbours(self, pod: str) -> tuple[str, ...]:
        """The k pods ``pod`` masks with and shares its secrets to, sorted; never ``pod`` itself."""
        at = self._at(pod)
        n = len(self.ring)
        if self.degree == n - 1:
            return tuple(name for name in self.members if name != pod)
        half = self.degree // 2
        return tuple(sorted(self.ring[(at + step) % n] for step in range(-half, half + 1) if step != 0))

    def share_index(self, holder: str, owner: str) -> int:
        """The x-coordinate of the share of ``owner``'s secrets that ``holder`` keeps.

        1..k for the owner's neighbours in sorted name order, k + 1 for the owner itself.
        """
        if holder == owner:
            self._at(owner)
            return self.holders
        around = self.neighbours(owner)
        if holder not in around:
            raise SecAggError(
                f"pod {holder!r} is not a neighbour of {owner!r} in this round's graph, so it holds no share of "
                f"{owner!r}'s secrets"
            )
        return around.index(holder) + 1

    def digest(self) -> bytes:
        """SHA-256 of the ring and degree: binds derived keys to this exact graph."""
        return self._graph_digest

    def _at(self, pod: str) -> int:
        try:
            return self._position[pod]
        except KeyError:
            raise SecAggError(
                f"pod {pod!r} is not in the round's cohort ({len(self.members)} pods): the task did not name it"
            ) from None


def neighbour_graph(
    members: Sequence[str], *, task_id: str, round_index: int, degree: int | None = None
) -> NeighbourGraph:
    """The graph every party derives for this task, round and cohort.

    ``degree`` overrides the default k (see the module docstring); it must be n - 1 or an
    even number in 2..n - 2, and every party must pass the same value.
    """
    names = sorted(members)
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise SecAggError(f"the cohort names {twice} more than once; each pod takes part once")
    n = len(names)
    if n < 2:
        raise SecAggError(
            f"a secure-aggregation round needs at least 2 pods; {n} would send its update in clear"
        )
    k = default_degree(n) if degree is None else degree
    if not (k == n - 1 or (2 <= k < n - 1 and k % 2 == 0)):
        raise SecAggError(f"degree = {k} for {n} pods: use n - 1 = {n - 1} or an even number from 2 to {n - 2}")
    seed = _digest([_SEED_LABEL, task_id.encode(), str(round_index).encode(), *(p.encode() for p in names)])
    ring = tuple(_shuffle(names, seed))
    return NeighbourGraph(degree=k, ring=ring)


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


def _shuffle(names: list[str], seed: bytes) -> list[str]:
    """Fisher-Yates with uniform draws (rejection sampling) from an AES-256-CTR keystream."""
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    order = list(names)
    for top in range(len(order) - 1, 0, -1):
        bound = top + 1
        # Largest multiple of bound below 2**64: draws above it would favour small values.
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            draw = int.from_bytes(stream.update(bytes(8)), "big")
            if draw < limit:
                break
        pick = draw % bound
        order[top], order[pick] = order[pick], order[top]
    return order
