"""A hostile modeller and hub against real pods' SecAgg+ round code, through a real loopback hub.

Each attack is refused by the pods with its fixed code, and in none does the modeller end up with
what it would need to read one pod's update: no masked input leaves before the roster checks out, and
no unmask answer leaves when the survivor lists do not agree.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from round_support import RoundRig, round_rig, settle
from task_support import cohort_of, entries, pods_of

from pod_agent.errors import TaskFailed
from pod_agent.protocol import CohortProof, IdentityKey, cohort_tree, envelope_bytes, round_path, sign_envelope
from pod_agent.protocol.messages import Envelope, TaskPayload
from pod_agent.protocol.secure_round import (
    AdvertRoster,
    CommittedList,
    KeyAdvertisement,
    Stage,
    SurvivorList,
)

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


async def test_survivor_lists_that_differ_between_pods_fail_the_consistency_check(tmp_path: Path) -> None:
    shown: dict[str, bytes] = {}

    @web.middleware
    async def hub_shows_pod_0_another_list(request: web.Request, handler: Any) -> web.StreamResponse:
        # The hub, colluding with the modeller, answers pod-0's survivors poll with a second signed list.
        response = await handler(request)
        # Decided once the (long-polling) request is answered: the lie is ready by then.
        if (request.method == "GET" and request.path.endswith("/survivors") and "lie" in shown
                and request.headers.get("X-Pod-Key-Id") == shown["pod-0"].decode()):
            return web.json_response(
                {"count": 1, "messages": [Envelope.model_validate_json(shown["lie"]).model_dump()]}
            )
        return response

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
