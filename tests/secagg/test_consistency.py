"""The consistency rule over per-neighbourhood survivor lists: a pod answers about w only when t signers of
w's own neighbourhood signed w's role as its list gives it, so two honest holders never answer w in two roles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_cohort import TASK_A, names

from pod_agent.errors import SecAggError
from pod_agent.secagg import NeighbourGraph, SurvivorView, confirmed_owners, neighbour_graph

GRAPH = neighbour_graph(names(40), task_id=TASK_A, round_index=0)  # sparse: k = 16, t = 9
OWNER = "pod-00"
HOLDERS = (OWNER, *GRAPH.neighbours(OWNER))


def _view(graph: NeighbourGraph, pod: str, owner_alive: bool) -> SurvivorView:
    """What an honest ``pod`` signs when shown ``OWNER`` in the role ``owner_alive`` and everyone else alive."""
    around = {pod, *graph.neighbours(pod)}
    dropped = frozenset({OWNER} & around) if not owner_alive else frozenset()
    return SurvivorView(frozenset(around - dropped), dropped)


def _answers(holder: str, shown: dict[str, bool], delivered: set[str]) -> bool | None:
    """The role in which honest ``holder`` answers about OWNER (None: it does not), given the lists the hub
    delivered to it; a delivered list that conflicts with its own fails its round."""
    mine = _view(GRAPH, holder, shown[holder])
    views = {holder: mine}
    for signer in delivered & set(GRAPH.neighbours(holder)):
        view = _view(GRAPH, signer, shown.get(signer, True))
        if mine.conflicts(view):
            return None
        views[signer] = view
    return shown[holder] if OWNER in confirmed_owners(GRAPH, views, me=holder) else None


@settings(max_examples=200, deadline=None)
@given(roles=st.lists(st.booleans(), min_size=len(HOLDERS), max_size=len(HOLDERS)), data=st.data())
def test_no_two_honest_holders_answer_about_one_pod_in_two_roles(roles: list[bool], data: st.DataObject) -> None:
    """The modeller shows OWNER's holders any mix of 'survived' and 'dropped' (OWNER itself survived) and the
    hub delivers each holder any subset of its neighbours' signed lists."""
    shown = dict(zip(HOLDERS, roles, strict=True)) | {OWNER: True}
    answered = set()
    for holder in HOLDERS:
        delivered = set(data.draw(st.lists(st.sampled_from(names(40)), max_size=40)))
        role = _answers(holder, shown, delivered)
        if role is not None:
            answered.add(role)
    assert len(answered) <= 1


def test_with_one_list_shown_to_all_every_holder_confirms_the_pod() -> None:
    shown = dict.fromkeys(names(40), True)
    assert all(_answers(holder, shown, set(names(40))) is True for holder in HOLDERS)


def test_a_far_holder_missing_signers_of_the_pod_s_neighbourhood_does_not_answer_about_it() -> None:
    """The holder farthest round the ring shares only k/2 + 1 = t pods with OWNER's neighbourhood: one of those
    signatures withheld, it cannot confirm OWNER and leaves it out of its answer."""
    ring = GRAPH.ring
    far = ring[(ring.index(OWNER) + GRAPH.degree // 2) % len(ring)]
    shared = [p for p in GRAPH.neighbours(far) if GRAPH.adjacent(p, OWNER) and p != OWNER]
    shown = dict.fromkeys(names(40), True)
    assert _answers(far, shown, set(names(40))) is True
    assert _answers(far, shown, set(names(40)) - {shared[0]}) is None


def test_the_confirming_views_must_include_the_pod_s_own() -> None:
    with pytest.raises(SecAggError, match="must include 'pod-00''s own"):
        confirmed_owners(GRAPH, {}, me=OWNER)
