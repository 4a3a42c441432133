"""A task's cohort committed by a Merkle root: what the modeller signs, and what each pod is shown of it.

Owns the tree over the wire models of ``messages.py``: ``CohortEntry`` (one pod as the modeller names
it: its name, the schema hash the task pins for it and its identity key id), ``Cohort`` (the signed
commitment: root and size) and ``CohortProof`` (one entry with its inclusion path). Here:
``CohortTree`` (built once per task by the modeller and by the hub, which hands each pod its own proof)
and ``check_inclusion`` (the pod's check of a proof against the signed commitment). Which pods may be
in a cohort, and how large it must be, is ``pod_agent.policy``'s.

Why a root: a task that listed every pod grew with the cohort, so a fan-out to N pods sent N copies of
an O(N) task. Signed, the root and size bind the whole cohort; a pod receives only its entry and a path
of about log2(N) hashes.

The tree is RFC 9162's (Certificate Transparency 2.0, section 2.1) over the entries sorted by pod name:
a leaf hashes ``0x00 || canonical_json(entry)``, a node ``0x01 || left || right``, and a tree of n > 1
leaves splits at the largest power of two below n. The domain bytes keep a leaf from passing as a node,
and the verification (RFC 9162 2.1.3.2) consumes the path exactly as (index, size) dictate, so a proof
holds only for an index below the signed size and a path of the one length that size gives.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pod_agent.errors import ProtocolError
from pod_agent.protocol.canonical import canonical_json
from pod_agent.protocol.messages import Cohort, CohortEntry, CohortProof

_LEAF, _NODE = b"\x00", b"\x01"


def _sha(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _leaf_hash(entry: CohortEntry) -> bytes:
    key_id, pod, schema_hash = entry.key_id, entry.pod, entry.schema_hash
    if pod.isascii() and key_id.isascii() and key_id.isalnum() and schema_hash.isascii() and schema_hash.isalnum():
        # canonical_json(entry) written out: its keys in order, and an ASCII string is NFC already and escaped
        # by json.dumps as canonical_json escapes it (letters and digits need no escape: the hex fields are
        # written as they are). A tree hashes a leaf per pod, and each pod its own: the general encoder's model
        # dump and normalising walk took a third of either.
        leaf = f'{{"key_id":"{key_id}","pod":{json.dumps(pod, ensure_ascii=False)},"schema_hash":"{schema_hash}"}}'
        return hashlib.sha256(_LEAF + leaf.encode()).digest()
    return _sha(_LEAF, canonical_json(entry))


def _split(n: int) -> int:
    """The largest power of two below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass(frozen=True)
class CohortTree:
    """The Merkle tree of a cohort's entries, sorted by pod name; ``proof(pod)`` is that pod's path.

    Holds every subtree hash (2n - 1 of them), so each proof is log2(n) look-ups.
    """

    entries: tuple[CohortEntry, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _nodes: dict[tuple[int, int], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ProtocolError("a cohort needs at least one pod: name the pods the task is for")
        names = [e.pod for e in self.entries]
        if names != sorted(names):
            raise ProtocolError("cohort entries must be sorted by pod name: build the tree with cohort_tree")
        repeated = sorted({a for a, b in itertools.pairwise(names) if a == b})
        if repeated:
            raise ProtocolError(f"cohort names pods {repeated[:5]} more than once: name each pod once")
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(names)})
        object.__setattr__(self, "_nodes", {})
        self._hash(0, len(self.entries))

    def _hash(self, start: int, end: int) -> bytes:
        if end - start == 1:
            digest = _leaf_hash(self.entries[start])
        else:
            mid = start + _split(end - start)
            digest = _sha(_NODE, self._hash(start, mid), self._hash(mid, end))
        self._nodes[(start, end)] = digest
        return digest

    @property
    def commitment(self) -> Cohort:
        return Cohort(root=self._nodes[(0, len(self.entries))].hex(), size=len(self.entries))

    @property
    def pods(self) -> tuple[str, ...]:
        return tuple(self._index)

    def proof(self, pod: str) -> CohortProof:
        index, path = self._path(pod)
        return CohortProof(entry=self.entries[index], index=index, path=path)

    def proof_json(self, pod: str) -> str:
        """``proof(pod)`` as JSON text, written without building the model: the hub sends one per pod of a
        fan-out, and validating the model's entry and path again took about a third of the time."""
        index, path = self._path(pod)
        hexes = ",".join(f'"{h}"' for h in path)
        return f'{{"entry":{self.entries[index].model_dump_json()},"index":{index},"path":[{hexes}]}}'

    def _path(self, pod: str) -> tuple[int, list[str]]:
        """``pod``'s index and its inclusion path, leaf side first, as hex."""
        index = self._index.get(pod)
        if index is None:
            raise ProtocolError(f"pod {pod!r} is not in this cohort")
        path: list[str] = []
        start, end = 0, len(self.entries)
        while end - start > 1:  # descend from the root
            mid = start + _split(end - start)
            if index < mid:
                path.append(self._nodes[(mid, end)].hex())
                end = mid
            else:
                path.append(self._nodes[(start, mid)].hex())
                start = mid
        return index, path[::-1]


def cohort_tree(entries: Sequence[CohortEntry]) -> CohortTree:
    """The tree of ``entries`` in pod-name order (ProtocolError for none or a repeated pod)."""
    return CohortTree(tuple(sorted(entries, key=lambda e: e.pod)))


def check_inclusion(cohort: Cohort, proof: CohortProof) -> None:
    """ProtocolError unless ``proof`` leads from its entry to the signed root at an index below the signed size."""
    who = f"cohort proof for pod {proof.entry.pod!r}"
    if proof.index >= cohort.size:
        raise ProtocolError(f"{who} gives index {proof.index}, outside the signed cohort of {cohort.size}")
    fn, sn = proof.index, cohort.size - 1
    digest = _leaf_hash(proof.entry)
    for sibling_hex in proof.path:
        if sn == 0:
            raise ProtocolError(f"{who} is longer than a cohort of {cohort.size} allows")
        # Each node hashed in line (no helper call): a pod checks one path per delivery, ~log2(N) nodes.
        if fn & 1 or fn == sn:
            digest = hashlib.sha256(_NODE + bytes.fromhex(sibling_hex) + digest).digest()
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            digest = hashlib.sha256(_NODE + digest + bytes.fromhex(sibling_hex)).digest()
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or digest.hex() != cohort.root:
        raise ProtocolError(f"{who} does not lead to the task's signed cohort root {cohort.root[:16]}")
