"""A hostile modeller and hub against real pods' SecAgg+ round code, through a real loopback hub.

Each attack is refused by the pods with its fixed code, and in none does the modeller end up with
what it would need to read one pod's update: no masked input leaves before the roster checks out, and
no unmask answer leaves when the survivor lists do not agree.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from round_support import RoundRig, round_rig, settle
from task_support import cohort_of, entries, pods_of

from pod_agent.errors import TaskFailed
from pod_agent.protocol import (
    CohortProof,
    IdentityKey,
    addressed_sender,
    cohort_tree,
    envelope_bytes,
    round_path,
    sign_envelope,
)
from pod_agent.protocol.messages import Envelope, TaskPayload
from pod_agent.protocol.secure_round import (
    AdvertRoster,
    CommittedList,
    KeyAdvertisement,
    Stage,
    SurvivorList,
)
from pod_agent.secagg import cohort_graph

WAIT_S = 10.0


async def _collect(rig: RoundRig, task: TaskPayload, stage: Stage, n: int) -> list[Envelope]:
    """What an honest-looking modeller sees of a stage once ``n`` pods posted it."""
    assert task.secagg is not None
    deadline = time.monotonic() + WAIT_S
    count, envelopes = 0, []
    while count < n and time.monotonic() < deadline:
        count, envelopes = await rig.modeller.round_messages(
            task.task_id, task.secagg.round, stage, after=count, wait_s=1
        )
    assert count >= n, f"only {count} {stage} messages"
    return envelopes


def _fields(task: TaskPayload) -> dict[str, Any]:
    assert task.secagg is not None
    return {"task_id": task.task_id, "round": task.secagg.round}


def _codes(outcomes: dict[str, Any]) -> dict[str, str]:
    return {name: o.code if isinstance(o, TaskFailed) else repr(o) for name, o in outcomes.items()}


async def _start(rig: RoundRig, task: TaskPayload) -> dict[str, asyncio.Task[Any]]:
    await rig.modeller.submit_task(task, cohort_of(task))
    return await rig.run_pods(task)


async def _attack_roster(rig: RoundRig, task: TaskPayload, forged: Envelope, *, replace: str | None) -> dict[str, str]:
    pods = await _start(rig, task)
    adverts = await _collect(rig, task, "advert", len(pods_of(task)))
    roster = [e for e in adverts if e.payload["pod"] != replace] + [forged]
    await _post_rosters(rig, task, roster)
    outcomes = _codes(await settle(pods, timeout_s=WAIT_S))
    # Nothing left the pods past their adverts: no shares, no masked input.
    assert rig.messages(task, "shares") == [] and rig.messages(task, "masked") == []
    return outcomes


def _roster(task: TaskPayload, adverts: list[Envelope], to: str) -> AdvertRoster:
    """Pod ``to``'s roster in a small (complete) cohort: every entry with its proof, and ``adverts``; a pod
    outside the signed cohort is shown with a proof from a cohort the modeller made up with it in."""
    signed = cohort_tree(cohort_of(task))

    def proof(pod: str) -> CohortProof:
        if pod in signed.pods:
            return signed.proof(pod)
        return cohort_tree(entries([*pods_of(task), pod], "c" * 64)).proof(pod)

    named = sorted({*signed.pods, *(str(e.payload["pod"]) for e in adverts)})
    return AdvertRoster(**_fields(task), to=to, members=[proof(pod) for pod in named], adverts=adverts)


async def _post_rosters(rig: RoundRig, task: TaskPayload, adverts: list[Envelope]) -> None:
    for pod in pods_of(task):
        await rig.modeller.post_round_message("roster", _roster(task, adverts, pod))


async def _post_each(rig: RoundRig, task: TaskPayload, stage: Stage, make: Any) -> None:
    """Post ``make(pod)`` to each pod of the task (the modeller's messages are one per pod)."""
    for pod in pods_of(task):
        await rig.modeller.post_round_message(stage, make(pod))


def _advert(task: TaskPayload, pod: str, key: IdentityKey, *, round_index: int | None = None) -> Envelope:
    assert task.secagg is not None
    c, s = (base64.b64encode(bytes([i]) * 32).decode() for i in (7, 9))
    advert = KeyAdvertisement(task_id=task.task_id, round=task.secagg.round if round_index is None else round_index,
                              pod=pod, c_public=c, s_public=s)
    return sign_envelope(advert, key)


async def test_a_round_key_advert_signed_by_another_key_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task = rig.task()
        # The modeller swaps pod-1's round keys for its own, signed with a key it holds.
        outcomes = await _attack_roster(rig, task, _advert(task, "pod-1", IdentityKey.generate()), replace="pod-1")
        assert outcomes == {"pod-0": "bad_advertisement", "pod-1": "bad_advertisement", "pod-2": "bad_advertisement"}


async def test_an_advert_replayed_from_another_round_is_refused(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task = rig.task()
        # pod-1's genuine signature, but over round 7's keys (as if recorded from an earlier round).
        outcomes = await _attack_roster(rig, task, _advert(task, "pod-1", rig.pods["pod-1"].key, round_index=7),
                                        replace="pod-1")
        assert set(outcomes.values()) == {"bad_advertisement"}


class _VersionOneAdvert(KeyAdvertisement):
    """An advert as a pod of the protocol's first version signs it (another ring, other mask streams)."""

    v: Literal[1] = 1  # type: ignore[assignment]


async def test_an_advert_of_another_protocol_version_is_refused(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task = rig.task()
        assert task.secagg is not None
        c, s = (base64.b64encode(bytes([i]) * 32).decode() for i in (7, 9))
        old = _VersionOneAdvert(task_id=task.task_id, round=task.secagg.round, pod="pod-1", c_public=c, s_public=s)
        # pod-1's own key signed it: only the version differs, which would leave masks that do not cancel.
        outcomes = await _attack_roster(rig, task, sign_envelope(old, rig.pods["pod-1"].key), replace="pod-1")
        assert set(outcomes.values()) == {"bad_advertisement"}


async def test_a_roster_naming_a_pod_outside_the_signed_cohort_is_dropped(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 4) as rig:
        # pod-3 is registered (a sybil the modeller controls) but not in this task's signed cohort.
        task = rig.task(["pod-0", "pod-1", "pod-2"])
        outcomes = await _attack_roster(rig, task, _advert(task, "pod-3", rig.pods["pod-3"].key), replace=None)
        assert outcomes == {name: "roster_outside_cohort" for name in pods_of(task)}


async def test_a_roster_member_signed_into_the_cohort_under_an_unpinned_key_is_refused(tmp_path: Path) -> None:
    """The modeller signs pod-1's entry under a key of its own: the proof holds, but no owner pinned that key."""
    async with round_rig(tmp_path, 3) as rig:
        task = rig.task(key_ids={"pod-1": IdentityKey.generate().key_id})
        pods = await _start(rig, task)
        adverts = await _collect(rig, task, "advert", 3)
        await _post_rosters(rig, task, adverts)
        outcomes = _codes(await settle(pods, timeout_s=WAIT_S))
        assert outcomes == {name: "unknown_peer" for name in pods_of(task)}
        assert rig.messages(task, "shares") == [] and rig.messages(task, "masked") == []


async def _honest_until_survivors(rig: RoundRig, task: TaskPayload) -> tuple[dict[str, asyncio.Task[Any]], list[str]]:
    pods = await _start(rig, task)
    adverts = await _collect(rig, task, "advert", len(pods_of(task)))
    await _post_rosters(rig, task, adverts)
    await _collect(rig, task, "shares", len(pods_of(task)))
    names = sorted(pods_of(task))
    await _post_each(rig, task, "committed", lambda pod: CommittedList(**_fields(task), to=pod, committed=names))
    await _collect(rig, task, "masked", len(pods_of(task)))
    return pods, names


async def test_a_pod_named_both_surviving_and_dropped_is_refused_and_nobody_answers(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task = rig.task()
        pods, names = await _honest_until_survivors(rig, task)
        # Both roles for pod-2 would hand the modeller its self mask and its mask key: its update.
        await _post_each(rig, task, "survivors",
                         lambda pod: SurvivorList(**_fields(task), to=pod, survivors=names, dropped=["pod-2"]))
        outcomes = _codes(await settle(pods, timeout_s=WAIT_S))
        assert outcomes == {name: "unmask_refused" for name in names}
        assert rig.messages(task, "unmask") == [] and rig.messages(task, "consistency") == []


def _hub_answering(stage: str, reader: Callable[[], str | None],
                   messages: Callable[[], list[Any] | None]) -> Any:
    """A hostile hub's middleware: once ``reader()``'s poll of ``stage`` is answered (a long poll, so the
    forgery is ready by then), it replaces the answer with ``messages()`` when there are some."""

    @web.middleware
    async def hub_swaps_the_answer(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.method == "GET" and request.path.endswith(f"/{stage}"):
            key_id = reader()
            if key_id is not None and request.headers.get("X-Pod-Key-Id") == key_id:
                forged = messages()
                if forged:
                    return web.json_response({"count": len(forged), "messages": forged})
        return response

    return hub_swaps_the_answer


async def test_survivor_lists_that_differ_between_pods_fail_the_consistency_check(tmp_path: Path) -> None:
    shown: dict[str, bytes] = {}
    # The hub, colluding with the modeller, answers pod-0's survivors poll with a second signed list.
    hub_shows_pod_0_another_list = _hub_answering(
        "survivors", lambda: shown["pod-0"].decode() if "pod-0" in shown else None,
        lambda: [Envelope.model_validate_json(shown["lie"]).model_dump()] if "lie" in shown else None)

    async with round_rig(tmp_path, 3, middlewares=[hub_shows_pod_0_another_list]) as rig:
        task = rig.task()
        shown["pod-0"] = rig.pods["pod-0"].key.key_id.encode()
        pods, names = await _honest_until_survivors(rig, task)
        # pod-0 is told pod-2 dropped (so it would send pod-2's mask key), the others that pod-2 survived
        # (so they would send its self-mask shares): together, pod-2's update.
        lie = SurvivorList(**_fields(task), to="pod-0", survivors=["pod-0", "pod-1"], dropped=["pod-2"])
        shown["lie"] = envelope_bytes(sign_envelope(lie, rig.modeller_key))
        await _post_each(rig, task, "survivors",
                         lambda pod: SurvivorList(**_fields(task), to=pod, survivors=names, dropped=[]))
        outcomes = _codes(await settle(pods, timeout_s=WAIT_S * 2))
        assert outcomes == {name: "inconsistent_survivors" for name in names}
        assert rig.messages(task, "unmask") == []


async def test_a_hub_answering_round_polls_with_nonsense_fails_the_round_as_bad_round_message(tmp_path: Path) -> None:
    polls = 0

    @web.middleware
    async def hub_answers_nonsense(request: web.Request, handler: Any) -> web.StreamResponse:
        # A hostile hub answers every roster poll at once, with a reply of the wrong shape.
        nonlocal polls
        if request.method == "GET" and request.path.endswith("/roster") and request.headers.get("X-Pod-Key-Id"):
            polls += 1
            return web.json_response({"count": "many", "messages": {"not": "a list"}})
        return await handler(request)

    async with round_rig(tmp_path, 3, middlewares=[hub_answers_nonsense]) as rig:
        task = rig.task()
        outcomes = _codes(await settle(await _start(rig, task), timeout_s=WAIT_S))
        assert outcomes == {name: "bad_round_message" for name in pods_of(task)}
        assert rig.messages(task, "shares") == [] and rig.messages(task, "masked") == []
        assert polls == len(pods_of(task))


async def test_messages_of_a_round_go_only_through_the_sender_s_own_path(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task = rig.task()
        await rig.modeller.submit_task(task, cohort_of(task))
        # The modeller cannot post a pod's advert, even one the pod really signed.
        signed = envelope_bytes(_advert(task, "pod-1", rig.pods["pod-1"].key))
        status = await _raw_post(rig, rig.modeller_key, round_path(task.task_id, 1, "advert"), signed)
        assert status == 403


async def _raw_post(rig: RoundRig, key: IdentityKey, path: str, body: bytes) -> int:
    import aiohttp

    from pod_agent.protocol import sign_request

    headers = sign_request(key, "POST", path, body, now=int(time.time()))
    async with aiohttp.ClientSession() as session, session.post(rig.url + path, data=body, headers=headers) as resp:
        return resp.status


def _forged(proof: CohortProof) -> CohortProof:
    """``proof`` with the first hash of its path altered."""
    path = [("0" if proof.path[0][0] != "0" else "1") + proof.path[0][1:], *proof.path[1:]]
    return proof.model_copy(update={"path": path})


async def _attack_members(rig: RoundRig, task: TaskPayload, members: Any, *, run: list[str]) -> dict[str, str]:
    """Pods ``run`` advertise; each is sent a roster whose entries are ``members(pod, honest)`` (the honest
    neighbourhood's proofs, as the signed ring places it) with the adverts among them."""
    assert task.secagg is not None
    await rig.modeller.submit_task(task, cohort_of(task))
    pods = await rig.run_pods(task, pods=run)
    adverts = {str(e.payload["pod"]): e for e in await _collect(rig, task, "advert", len(run))}
    tree = cohort_tree(cohort_of(task))
    graph = cohort_graph(dict(enumerate(tree.pods)), size=task.cohort.size, cohort_root=task.cohort.root,
                         task_id=task.task_id, round_index=task.secagg.round)
    for pod in run:
        honest = [tree.proof(name) for name in (pod, *graph.neighbours(pod))]
        shown = members(pod, honest)
        roster = AdvertRoster(**_fields(task), to=pod, members=shown,
                              adverts=[adverts[p.entry.pod] for p in shown if p.entry.pod in adverts])
        await rig.modeller.post_round_message("roster", roster)
    outcomes = _codes(await settle(pods, timeout_s=WAIT_S))
    assert rig.messages(task, "shares") == [] and rig.messages(task, "masked") == []
    return outcomes


async def test_a_roster_entry_whose_proof_is_forged_or_from_another_task_is_outside_the_cohort(tmp_path: Path) -> None:
    async with round_rig(tmp_path, 3) as rig:
        task, other = rig.task(), rig.task()
        elsewhere = cohort_tree(entries(pods_of(task), "d" * 64))  # pod-1's entry in another task's cohort

        def forged(pod: str, honest: list[CohortProof]) -> list[CohortProof]:
            if pod == "pod-0":
                return [p if p.entry.pod != "pod-1" else _forged(p) for p in honest]
            return [p if p.entry.pod != "pod-1" else elsewhere.proof("pod-1") for p in honest]

        assert other.cohort == task.cohort and task.task_id != other.task_id
        outcomes = await _attack_members(rig, task, forged, run=["pod-0", "pod-2"])
        assert outcomes == {"pod-0": "roster_outside_cohort", "pod-2": "roster_outside_cohort"}


async def test_a_roster_that_places_a_pod_off_its_signed_ring_is_refused(tmp_path: Path) -> None:
    """18 pods: the ring is sparse (k = 16), so each pod has exactly one non-neighbour. The modeller shows
    pod-0 that pod instead of a neighbour, pod-1 the neighbourhood of a ring it chose (another seed), and
    pod-2 its neighbourhood less one neighbour (an honest pod it would rather pod-2 did not mask with)."""
    async with round_rig(tmp_path, 18) as rig:
        task = rig.task()
        assert task.secagg is not None
        tree = cohort_tree(cohort_of(task))
        chosen = next(
            g for g in (cohort_graph(dict(enumerate(tree.pods)), size=18, cohort_root=task.cohort.root,
                                     task_id=task.task_id, round_index=r) for r in range(100, 200))
            if set(g.neighbours("pod-1")) != set(
                cohort_graph(dict(enumerate(tree.pods)), size=18, cohort_root=task.cohort.root, task_id=task.task_id,
                             round_index=task.secagg.round).neighbours("pod-1"))
        )

        def misplaced(pod: str, honest: list[CohortProof]) -> list[CohortProof]:
            if pod == "pod-0":
                stranger = next(name for name in tree.pods if name not in {p.entry.pod for p in honest})
                return [*honest[:-1], tree.proof(stranger)]
            if pod == "pod-1":
                return [tree.proof(name) for name in ("pod-1", *chosen.neighbours("pod-1"))]
            return honest[:-1]

        outcomes = await _attack_members(rig, task, misplaced, run=["pod-0", "pod-1", "pod-2"])
        assert outcomes == {"pod-0": "roster_not_neighbour", "pod-1": "roster_not_neighbour",
                            "pod-2": "roster_incomplete"}


async def test_a_roster_or_list_relayed_to_another_pod_than_its_addressee_is_refused(tmp_path: Path) -> None:
    held: dict[str, Any] = {}

    def pod_1s_roster() -> list[Any]:
        records = held["rig"].storage.round_messages(held["task"].task_id, 1, "roster")
        return [json.loads(r.envelope) for r in records if r.sender == addressed_sender("pod-1")]

    # The hub hands pod-0 the roster addressed to pod-1 (which holds pod-1's own entry and proof).
    hub_swaps_pod_0_and_pod_1 = _hub_answering(
        "roster", lambda: held["rig"].pods["pod-0"].key.key_id if "rig" in held else None, pod_1s_roster)

    async with round_rig(tmp_path, 3, middlewares=[hub_swaps_pod_0_and_pod_1]) as rig:
        task = rig.task()
        held.update(rig=rig, task=task)
        await rig.modeller.submit_task(task, cohort_of(task))
        pods = await rig.run_pods(task, pods=["pod-0"])
        adverts = await _collect(rig, task, "advert", 1)
        for pod in ("pod-1", "pod-0"):  # pod-1's is held before pod-0's poll is answered
            await rig.modeller.post_round_message("roster", _roster(task, adverts, pod))
        assert _codes(await settle(pods, timeout_s=WAIT_S)) == {"pod-0": "misaddressed"}
        assert rig.messages(task, "shares") == [] and rig.messages(task, "masked") == []
