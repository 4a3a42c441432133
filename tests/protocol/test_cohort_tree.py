"""The cohort Merkle tree: every entry's proof verifies against the root and size, and nothing else does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pod_agent.errors import ProtocolError
from pod_agent.protocol import Cohort, CohortEntry, CohortProof, canonical_json, check_inclusion, cohort_tree


def _entries(n: int) -> list[CohortEntry]:
    return [CohortEntry(pod=f"pod-{i:03d}", schema_hash="ab" * 32, key_id=f"{i:064x}") for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 17, 32, 33])
def test_every_entrys_proof_verifies_with_a_path_of_about_log2_n(n: int) -> None:
    tree = cohort_tree(list(reversed(_entries(n))))  # order given does not matter: sorted by name
    assert tree.commitment.size == n
    for entry in _entries(n):
        proof = tree.proof(entry.pod)
        assert proof.entry == entry
        assert len(proof.path) <= max(1, (n - 1).bit_length())
        check_inclusion(tree.commitment, proof)
        assert CohortProof.model_validate_json(tree.proof_json(entry.pod)) == proof  # as the hub sends it


def test_a_proof_does_not_verify_under_another_size_or_root() -> None:
    tree = cohort_tree(_entries(5))
    proof = tree.proof("pod-004")
    with pytest.raises(ProtocolError, match="outside the signed cohort of 4"):
        check_inclusion(Cohort(root=tree.commitment.root, size=4), proof)
    with pytest.raises(ProtocolError, match="does not lead to the task's signed cohort root"):
        check_inclusion(Cohort(root=tree.commitment.root, size=6), proof)
    with pytest.raises(ProtocolError, match="does not lead to the task's signed cohort root"):
        check_inclusion(cohort_tree(_entries(6)).commitment, proof)


def test_a_changed_entry_index_or_path_does_not_verify() -> None:
    tree = cohort_tree(_entries(9))
    proof = tree.proof("pod-003")
    changed = [
        proof.model_copy(update={"entry": proof.entry.model_copy(update={"schema_hash": "cd" * 32})}),
        proof.model_copy(update={"index": 2}),
        proof.model_copy(update={"path": proof.path[:-1]}),
        proof.model_copy(update={"path": [*proof.path, "00" * 32]}),
    ]
    for bad in changed:
        with pytest.raises(ProtocolError, match="cohort proof for pod 'pod-003'"):
            check_inclusion(tree.commitment, bad)


def test_a_cohort_names_each_pod_once_and_at_least_one() -> None:
    with pytest.raises(ProtocolError, match=r"cohort names pods \['pod-001'\] more than once"):
        cohort_tree([*_entries(3), _entries(2)[1]])
    with pytest.raises(ProtocolError, match="a cohort needs at least one pod"):
        cohort_tree([])
    with pytest.raises(ProtocolError, match="pod 'stranger' is not in this cohort"):
        cohort_tree(_entries(2)).proof("stranger")


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40))
def test_a_leaf_hashes_the_canonical_json_of_its_entry_whatever_the_pod_name(name: str) -> None:
    # A one-pod tree's root is its leaf: RFC 9162's 0x00 || canonical_json(entry), for ASCII names (hashed
    # without the general encoder) as for any other (quotes, control characters, NFD text).
    entry = CohortEntry(pod=name, schema_hash="ab" * 32, key_id="cd" * 32)
    leaf = hashlib.sha256(b"\x00" + canonical_json(entry)).hexdigest()
    assert cohort_tree([entry]).commitment.root == leaf
