from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_cohort import TASK_A, TASK_B, chi_square_256, names

from pod_agent.errors import SecAggError
from pod_agent.secagg import NeighbourGraph, cohort_graph, default_degree, neighbour_graph


def _components(graph: NeighbourGraph) -> int:
    seen: set[str] = set()
    parts = 0
    for start in graph.members:
        if start in seen:
            continue
        parts += 1
        stack = [start]
        while stack:
            pod = stack.pop()
            if pod not in seen:
                seen.add(pod)
                stack.extend(graph.neighbours(pod))
    return parts


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), round_index=st.integers(0, 50))
def test_graph_is_k_regular_symmetric_loop_free_and_connected(n: int, round_index: int) -> None:
    graph = neighbour_graph(names(n), task_id=TASK_A, round_index=round_index)
    assert graph.degree == default_degree(n)
    for pod in graph.members:
        around = graph.neighbours(pod)
        assert len(around) == graph.degree == len(set(around))
        assert pod not in around
        assert list(around) == sorted(around)
        assert all(pod in graph.neighbours(other) for other in around)
    assert _components(graph) == 1


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 120))
def test_share_indexes_are_one_to_k_for_neighbours_and_k_plus_one_for_the_owner(n: int) -> None:
    graph = neighbour_graph(names(n), task_id=TASK_B, round_index=1)
    for owner in graph.members:
        indexes = sorted(graph.share_index(holder, owner) for holder in graph.neighbours(owner))
        assert indexes == list(range(1, graph.degree + 1))
        assert graph.share_index(owner, owner) == graph.holders == graph.degree + 1


@pytest.mark.parametrize(("n", "k", "t"), [(2, 1, 2), (3, 2, 2), (5, 4, 3), (12, 11, 7), (17, 16, 9), (18, 16, 9),
                                           (40, 16, 9), (100, 16, 9), (1000, 20, 11), (10**4, 28, 15),
                                           (10**6, 40, 21)])
def test_degree_is_complete_for_small_cohorts_then_logarithmic_and_threshold_a_majority(n: int, k: int,
                                                                                         t: int) -> None:
    assert default_degree(n) == k
    assert t == (k + 1) // 2 + 1 and 2 * t > k + 1
    if n <= 1000:
        graph = neighbour_graph(names(n), task_id=TASK_A, round_index=0)
        assert (graph.degree, graph.threshold) == (k, t)


def test_every_party_derives_the_same_graph_whatever_order_it_lists_the_cohort() -> None:
    pods = names(60)
    first = neighbour_graph(pods, task_id=TASK_A, round_index=3)
    again = neighbour_graph(list(reversed(pods)), task_id=TASK_A, round_index=3)
    assert first == again and first.digest() == again.digest()
    assert all(first.neighbours(p) == again.neighbours(p) for p in pods)


def test_task_round_and_cohort_each_change_the_graph() -> None:
    pods = names(60)
    base = neighbour_graph(pods, task_id=TASK_A, round_index=0)
    others = [
        neighbour_graph(pods, task_id=TASK_B, round_index=0),
        neighbour_graph(pods, task_id=TASK_A, round_index=1),
        neighbour_graph([*pods[:-1], "pod-zz"], task_id=TASK_A, round_index=0),
    ]
    for other in others:
        assert other.digest() != base.digest()
        assert sum(other.neighbours(p) != base.neighbours(p) for p in pods[:-1]) > 50


def test_a_complete_graph_still_binds_its_digest_to_task_and_round() -> None:
    pods = names(5)
    a, b = (neighbour_graph(pods, task_id=TASK_A, round_index=r) for r in (0, 1))
    assert a.neighbours("pod-00") == b.neighbours("pod-00")
    assert a.digest() != b.digest()


def test_ring_positions_look_uniform_across_rounds() -> None:
    # Where cohort entry 0 lands on a ring of 256 over 5120 rounds: 20 per position expected.
    graphs = (cohort_graph({0: "pod-00"}, size=256, cohort_root="ab" * 32, task_id=TASK_A, round_index=r)
              for r in range(5120))
    positions = np.array([graph.placement.position(0) for graph in graphs])
    assert chi_square_256(positions) < 330.5


def test_degree_override_must_be_even_or_complete() -> None:
    pods = names(30)
    assert neighbour_graph(pods, task_id=TASK_A, round_index=0, degree=24).degree == 24
    assert neighbour_graph(pods, task_id=TASK_A, round_index=0, degree=29).threshold == 16
    for bad in (0, 7, 30):
        with pytest.raises(SecAggError, match=f"degree = {bad} for 30 pods: use n - 1 = 29 or an even number"):
            neighbour_graph(pods, task_id=TASK_A, round_index=0, degree=bad)


def test_a_pod_named_twice_is_refused() -> None:
    with pytest.raises(SecAggError, match=r"the cohort names \['pod-01'\] more than once"):
        neighbour_graph(["pod-00", "pod-01", "pod-01"], task_id=TASK_A, round_index=0)


@pytest.mark.parametrize("members", [[], ["pod-00"]])
def test_a_cohort_under_two_pods_is_refused(members: list[str]) -> None:
    with pytest.raises(SecAggError, match="needs at least 2 pods"):
        neighbour_graph(members, task_id=TASK_A, round_index=0)


def test_an_outsider_has_no_neighbours_and_holds_no_shares() -> None:
    graph = neighbour_graph(names(40), task_id=TASK_A, round_index=0)
    with pytest.raises(SecAggError, match="pod 'pod-99' is not in the round's cohort"):
        graph.neighbours("pod-99")
    stranger = next(p for p in graph.members if p not in graph.neighbours("pod-00") and p != "pod-00")
    with pytest.raises(SecAggError, match=f"pod '{stranger}' is not a neighbour of 'pod-00'"):
        graph.share_index(stranger, "pod-00")


def test_sparse_neighbours_are_the_ring_window() -> None:
    graph = neighbour_graph(names(40), task_id=TASK_A, round_index=0)
    ring, half = graph.ring, graph.degree // 2
    for at, pod in enumerate(ring):
        window = {ring[(at + step) % 40] for step in itertools.chain(range(-half, 0), range(1, half + 1))}
        assert set(graph.neighbours(pod)) == window


def test_cohort_and_threshold_follow_from_the_placement_and_degree() -> None:
    graph = neighbour_graph(names(30), task_id=TASK_A, round_index=0, degree=8)
    rebuilt = NeighbourGraph(degree=graph.degree, placement=graph.placement, names=dict(enumerate(names(30))))
    assert rebuilt == graph and rebuilt.digest() == graph.digest()
    assert rebuilt.members == tuple(sorted(graph.ring)) == tuple(names(30))
    assert rebuilt.threshold == 5  # smallest majority of k + 1 = 9 holders


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 2000))
def test_the_placement_is_a_permutation_with_its_inverse(n: int) -> None:
    placement = neighbour_graph(names(n), task_id=TASK_A, round_index=n).placement
    positions = [placement.position(i) for i in range(n)]
    assert sorted(positions) == list(range(n))
    assert [placement.index_at(p) for p in positions] == list(range(n))


@pytest.mark.parametrize("n", [5, 17, 18, 200])
def test_a_pod_that_knows_only_its_neighbourhood_sees_the_graph_the_modeller_sees(n: int) -> None:
    """Each pod holds the entries at its neighbour indices only; its neighbours and share indices are the
    modeller's, and it needs no other name."""
    full = cohort_graph(dict(enumerate(names(n))), size=n, cohort_root="ab" * 32, task_id=TASK_A, round_index=2)
    for me in range(n):
        around = full.neighbour_indices(me)
        local = cohort_graph({i: names(n)[i] for i in (me, *around)}, size=n, cohort_root="ab" * 32,
                             task_id=TASK_A, round_index=2)
        pod = names(n)[me]
        assert local.neighbours(pod) == full.neighbours(pod) and local.digest() == full.digest()
        for other in local.neighbours(pod):
            assert local.share_index(pod, other) == full.share_index(pod, other)
            assert local.share_index(other, pod) == full.share_index(other, pod)
    first = cohort_graph({i: names(n)[i] for i in (0, *full.neighbour_indices(0))}, size=n, cohort_root="ab" * 32,
                         task_id=TASK_A, round_index=2)
    outside = sorted(set(full.members) - set(first.members))
    if outside:
        with pytest.raises(SecAggError, match="not in the round's cohort as this party knows it"):
            first.neighbours(outside[0])


def test_the_ring_depends_on_the_signed_root_not_on_who_turned_up() -> None:
    pods = dict(enumerate(names(40)))
    a, b = (cohort_graph(pods, size=40, cohort_root=root * 32, task_id=TASK_A, round_index=0) for root in ("ab", "cd"))
    assert a.ring != b.ring and a.digest() != b.digest()
    fewer = cohort_graph({i: pods[i] for i in range(0, 40, 2)}, size=40, cohort_root="ab" * 32, task_id=TASK_A,
                         round_index=0)
    assert fewer.digest() == a.digest()
    assert fewer.share_index(pods[0], pods[0]) == a.share_index(pods[0], pods[0])
