"""SecAgg+ faults and forged cohorts against real ``pod-agent run`` processes (strict sandbox) and a real hub.

A pod SIGKILLed while it waits in the advert stage lost its round secrets: restarted on the same
state dir it fails the task as ``round_interrupted`` (signed, read by the modeller), never trains or
advertises again, and its peers only see the round time out. A pod holds only its own entry of the
signed cohort, so a cohort naming pods its owner did not pin - sybils that registered at the hub, a pinned
name under another key - fails ``unknown_peer`` when the roster forwards their adverts with their cohort
proofs: after training and advertising, before any share or masked input leaves the pod. An honest hub
refuses a task for names nobody registered.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from task_support import cohort_of, entries, remember

from pod_agent.errors import ModellerError
from pod_agent.modeller import ModellerClient, VerifiedResult, build_task, run_sync
from pod_agent.modeller.secure_round import run_secure_round
from pod_agent.modeller.weights import starting_weights
from pod_agent.protocol import (
    CohortEntry,
    IdentityKey,
    KeyAdvertisement,
    canonical_json,
    envelope_bytes,
    round_path,
    sign_envelope,
    spec_sha256,
)
from pod_agent.protocol.hub_api import PodRegistered, PodRegistration, Stored
from pod_agent.protocol.hubhttp import signed_call
from pod_agent.protocol.messages import (
    DataSelection,
    Hyperparameters,
    ModelRef,
    SecAggParams,
    Split,
    TaskPayload,
    WeightsRef,
)

pytestmark = pytest.mark.slow

from e2e_support import (  # type: ignore[import-not-found]  # noqa: E402
    SMALL_CSV,
    AgentProcess,
    Cluster,
    async_wait_for,
    register_modeller,
    start_cluster_at,
    wait_for,
)

NAMES = ("pod-a", "pod-b", "pod-c")
SPEC = {
    "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
    "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1,
}
MODEL = ModelRef(style="declarative", name="linear", spec=SPEC, sha256=spec_sha256(SPEC))
# SMALL_CSV's ~120 rows split 60/20/20 keep every split over the rig's min_rows of 20; 1 epoch of 32 is 3 steps.
SELECTION = DataSelection(target="label", split=Split(train=60, validation=20, test=20))
HYPERPARAMETERS = Hyperparameters(epochs=1, batch_size=32)
# Parameter clipping as FedAvg's defaults: each value bounded by 2**20 / (2 * 2**16 * 3) < 4, the owners' ceiling.
PRIME_Q, PRECISION = 2**20, 2**16
# After advertising, a pod waits advert_timeout_s + 2 * stage_timeout_s for the roster: 6 s here.
ADVERT_TIMEOUT_S, STAGE_TIMEOUT_S = 4.0, 1.0
# Strict-sandbox training of three pods at once on two cores, cold (warm_worker off).
TRAIN_TIMEOUT_S = 90.0


@dataclass
class Federation:
    """Three strict-sandboxed pods pinned to each other, a hub, and the modeller's starting weights."""

    cluster: Cluster
    agents: dict[str, AgentProcess]
    keys: dict[str, IdentityKey]
    weights: WeightsRef
    schema_hash: str

    def cohort(self, names: list[str] | tuple[str, ...] = NAMES) -> list[CohortEntry]:
        return entries(list(names), self.schema_hash, key_ids={name: self.keys[name].key_id for name in names})

    def client(self) -> ModellerClient:
        """The modeller's hub client, verifying results under the keys the pod owners sent (not the hub's)."""
        pinned = {name: key.public for name, key in self.keys.items()}
        return ModellerClient(self.cluster.hub.url, self.cluster.modeller.key, pod_keys=pinned)

    def wait_online(self) -> None:
        wait_for(lambda: self.cluster.online(*NAMES), timeout_s=30, what=f"{NAMES} online")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("secure-round-faults")
    data = tmp / "small.csv"
    data.write_text(SMALL_CSV)
    cluster = start_cluster_at(tmp)
    try:
        run_sync(register_modeller(cluster.modeller))
        keys = {name: IdentityKey.generate() for name in NAMES}
        pins = {name: key.public for name, key in keys.items()}
        agents = {name: cluster.add_pod(name, data, sandbox="strict", key=keys[name], peers=pins) for name in NAMES}
        wait_for(lambda: cluster.online(*NAMES), timeout_s=30, what="the three pods registered")
        weights, schema_hash = run_sync(_starting_weights(cluster, tmp / "modeller"))
        yield Federation(cluster, agents, keys, weights, schema_hash)
    finally:
        for agent in cluster.agents:
            agent.kill()
        cluster.hub.kill()


async def _starting_weights(cluster: Cluster, work_dir: Path) -> tuple[WeightsRef, str]:
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        cohort = [p for p in await client.pods() if p.name in NAMES]
        ref = await starting_weights(
            client, model=MODEL, cohort=cohort, selection=SELECTION, hyperparameters=HYPERPARAMETERS,
            weights_file=None, work_dir=work_dir,
        )
        return ref, cohort[0].schema_hash


def _secure_task(fed: Federation, client: ModellerClient, cohort: list[CohortEntry]) -> TaskPayload:
    remember(cohort)
    secagg = SecAggParams(
        prime_q=PRIME_Q, precision=PRECISION, num_workers=len(cohort),
        advert_timeout_s=ADVERT_TIMEOUT_S, stage_timeout_s=STAGE_TIMEOUT_S,
    )
    return build_task(
        modeller_id=client.key.key_id, cohort=cohort, kind="train",
        model=MODEL, data=SELECTION, hyperparameters=HYPERPARAMETERS, weights=fed.weights, secagg=secagg,
    )


def _round_messages(fed: Federation, task_id: str) -> list[tuple[str, str, int]]:
    """(stage, sender, seq) of every message the hub relays for ``task_id``, in arrival order."""
    rows = fed.cluster.hub.query(
        "SELECT stage, sender, seq FROM round_messages WHERE task_id = ? ORDER BY seq", (task_id,)
    )
    return [(str(stage), str(sender), int(seq)) for stage, sender, seq in rows]


def _history(agent: AgentProcess, task_id: str) -> list[str]:
    return [str(row[0]) for row in agent.state("SELECT to_status FROM task_events WHERE task_id = ?", (task_id,))]


def _outcome(answer: VerifiedResult | str) -> tuple[str, str | None]:
    """(status, reason) of a signed result; a bare code means the pod refused without a signed result."""
    if isinstance(answer, VerifiedResult):
        return answer.payload.status, answer.payload.reason
    return "unsigned refusal", answer


# -- a pod killed mid-round ---------------------------------------------------------------------


async def test_a_pod_killed_while_waiting_for_the_roster_fails_round_interrupted_and_never_runs_again(
    federation: Federation,
) -> None:
    fed, victim_name = federation, "pod-b"
    fed.wait_online()
    victim = fed.agents[victim_name]
    async with fed.client() as client:
        task = _secure_task(fed, client, fed.cohort())
        # Submitted, but the round is not driven: no roster ever comes, so each pod waits after advertising.
        await client.submit_task(task, cohort_of(task))
        await async_wait_for(
            lambda: ("advert", victim_name) in {(s, p) for s, p, _ in _round_messages(fed, task.task_id)},
            timeout_s=TRAIN_TIMEOUT_S, what=f"{victim_name}'s advert at the hub",
        )
        assert victim.task_status(task.task_id) == "running"
        leftover = victim.state_dir / "work" / task.task_id
        # While it runs, the prepared rows are the agent's and the sandbox group's only, never other users'.
        assert leftover.stat().st_mode & 0o777 == 0o700
        assert all(path.stat().st_mode & 0o007 == 0 for path in leftover.rglob("*") if path.is_file())
        victim.kill()
        (advert_before,) = [m for m in _round_messages(fed, task.task_id) if m[1] == victim_name]
        restarted = AgentProcess(victim.name, victim.config, victim.state_dir, victim.log).start()
        fed.cluster.agents.append(restarted)
        fed.agents[victim_name] = restarted
        answers = await client.wait_results(task.task_id, list(NAMES), timeout_s=TRAIN_TIMEOUT_S)

    outcomes = {pod: _outcome(answer) for pod, answer in answers.items()}
    assert outcomes == {
        "pod-a": ("failed", "round_timeout"),
        victim_name: ("failed", "round_interrupted"),
        "pod-c": ("failed", "round_timeout"),
    }, outcomes
    # The restarted pod neither trained nor advertised again: one run, its one advert untouched, and no
    # stage past the adverts ever started.
    for name in NAMES:
        history = _history(fed.agents[name], task.task_id)
        assert history.count("running") == 1, (name, history)
    messages = _round_messages(fed, task.task_id)
    assert [m for m in messages if m[1] == victim_name] == [advert_before]
    assert sorted((stage, sender) for stage, sender, _ in messages) == [("advert", name) for name in NAMES]
    await async_wait_for(lambda: restarted.task_status(task.task_id) == "delivered", what="the failure delivered")
    assert "was interrupted by the last shutdown; failed as round_interrupted" in restarted.log_text()
    # The killed process's prepared copy of the rows does not outlive it.
    assert not (victim.state_dir / "work" / task.task_id).exists()

    # Beyond the round timing out nothing changed for the cohort: all three take the next task.
    fed.wait_online()
    async with fed.client() as client:
        probe = build_task(
            modeller_id=client.key.key_id, cohort=entries(list(NAMES), fed.schema_hash), kind="schema-stats"
        )
        await client.submit_task(probe, cohort_of(probe))
        after = await client.wait_results(probe.task_id, list(NAMES), timeout_s=30)
    assert {pod: _outcome(answer) for pod, answer in after.items()} == {name: ("done", None) for name in NAMES}


# -- cohorts the owners did not pin -------------------------------------------------------------


async def _failed_at_the_roster(
    fed: Federation, client: ModellerClient, task: TaskPayload, pods: list[str], *, sybils: dict[str, IdentityKey],
    work_dir: Path,
) -> None:
    """Drive the round: each of ``pods`` advertises, then fails the task ``unknown_peer`` in a signed result once
    the roster forwards the adverts (the sybils' own, signed by their keys) with their cohort proofs; no share
    and no masked input of the task reaches the hub."""
    await async_wait_for(
        lambda: {p for s, p, _ in _round_messages(fed, task.task_id) if s == "advert"} >= set(pods),
        timeout_s=TRAIN_TIMEOUT_S, what=f"adverts of {pods}",
    )
    for name, key in sybils.items():  # the modeller's sybils advertise round keys of their own
        c, s = (base64.b64encode(bytes([i]) * 32).decode() for i in (7, 9))
        advert = KeyAdvertisement(task_id=task.task_id, round=0, pod=name, c_public=c, s_public=s)
        await _post_as(fed, key, task.task_id, envelope_bytes(sign_envelope(advert, key)))
    # Driven by a modeller that takes the hub's word for the sybils' keys (its own sybils).
    async with ModellerClient(fed.cluster.hub.url, fed.cluster.modeller.key) as driver:
        with pytest.raises(ModellerError):
            await run_secure_round(driver, task, cohort_of(task), vector_size=4, work_dir=work_dir, min_pods=2)
    answers = await client.wait_results(task.task_id, pods, timeout_s=30)
    assert {pod: _outcome(answers[pod]) for pod in pods} == {pod: ("failed", "unknown_peer") for pod in pods}
    assert {stage for stage, _, _ in _round_messages(fed, task.task_id)} == {"advert", "roster"}


async def _post_as(fed: Federation, key: IdentityKey, task_id: str, body: bytes) -> None:
    async with aiohttp.ClientSession() as session:
        await signed_call(
            session, key, base=fed.cluster.hub.url, method="POST", path=round_path(task_id, 0, "advert"), tls=False,
            reply=Stored, body=body, total_s=30,
        )


async def test_a_cohort_of_made_up_names_is_not_taken_by_an_honest_hub(federation: Federation) -> None:
    fed, victim = federation, "pod-a"
    fed.wait_online()
    ghosts = entries(["ghost-1", "ghost-2"], fed.schema_hash, key_ids={g: IdentityKey.generate().key_id for g in
                                                                       ("ghost-1", "ghost-2")})
    async with fed.client() as client:
        task = _secure_task(fed, client, [*fed.cohort([victim]), *ghosts])
        with pytest.raises(ModellerError, match="unknown pods"):
            await client.submit_task(task, cohort_of(task))


async def test_a_cohort_of_sybils_registered_at_the_hub_fails_unknown_peer_at_the_roster(
    federation: Federation, tmp_path: Path
) -> None:
    fed, victim = federation, "pod-a"
    fed.wait_online()
    sybils = {name: IdentityKey.generate() for name in ("sybil-1", "sybil-2")}
    async with fed.client() as client:
        listed = {p.name: p for p in await client.pods()}
        # Real registrations through the hub's API, each signed by its own fresh key, copying the victim's schema.
        async with aiohttp.ClientSession() as session:
            for name, key in sybils.items():
                await signed_call(
                    session, key, base=fed.cluster.hub.url, method="POST", path="/v1/pods/register", tls=False,
                    reply=PodRegistered, total_s=30,
                    body=canonical_json(PodRegistration(
                        name=name, public_key=key.public.to_b64(), schema_public=listed[victim].schema,
                        schema_hash=listed[victim].schema_hash, row_count=listed[victim].row_count,
                        sandbox_level="strict", heartbeat_s=0.5,
                    )),
                )
        cohort = [
            *fed.cohort([victim]),
            *entries(list(sybils), fed.schema_hash, key_ids={n: k.key_id for n, k in sybils.items()}),
        ]
        task = _secure_task(fed, client, cohort)
        await client.submit_task(task, cohort_of(task))  # the hub relays it: every pod named is registered
        await _failed_at_the_roster(fed, client, task, [victim], sybils=sybils, work_dir=tmp_path)


async def test_a_pinned_peer_named_under_another_key_fails_unknown_peer_at_the_roster(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    fed.wait_online()
    # pod-c's name with a key id its owner's peers never pinned (what a registry that swapped keys would yield).
    cohort = [*fed.cohort(["pod-a", "pod-b"]), *entries(["pod-c"], fed.schema_hash,
                                                         key_ids={"pod-c": IdentityKey.generate().key_id})]
    async with fed.client() as client:
        task = _secure_task(fed, client, cohort)
        await client.submit_task(task, cohort_of(task))
        # pod-a and pod-b do not know that key for pod-c; pod-c does not know it for itself.
        await _failed_at_the_roster(fed, client, task, list(NAMES), sybils={}, work_dir=tmp_path)
