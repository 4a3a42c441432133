"""SecAgg+ faults and forged cohorts against real ``pod-agent run`` processes (strict sandbox) and a real hub.

A pod SIGKILLed while it waits in the advert stage lost its round secrets: restarted on the same
state dir it fails the task as ``round_interrupted`` (signed, read by the modeller), never trains or
advertises again, and its peers only see the round time out. A cohort naming pods the owner did not
pin - made-up names, sybils that registered at the hub, a pinned name under another key - is refused
``unknown_peer`` before anything is advertised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from pod_agent.errors import ModellerError
from pod_agent.modeller import ModellerClient, VerifiedResult, build_task, run_sync
from pod_agent.modeller.weights import starting_weights
from pod_agent.protocol import IdentityKey, canonical_json, envelope_bytes, sign_envelope, spec_sha256
from pod_agent.protocol.hub_api import PodRegistered, PodRegistration
from pod_agent.protocol.hubhttp import signed_call
from pod_agent.protocol.messages import (
    DataSelection,
    Hyperparameters,
    ModelRef,
    Participant,
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

    def participants(self, names: list[str] | tuple[str, ...] = NAMES) -> list[Participant]:
        return [Participant(pod=name, key_id=self.keys[name].key_id) for name in names]

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


def _secure_task(fed: Federation, client: ModellerClient, cohort: list[Participant]) -> TaskPayload:
    secagg = SecAggParams(
        prime_q=PRIME_Q, precision=PRECISION, num_workers=len(cohort), participants=cohort,
        advert_timeout_s=ADVERT_TIMEOUT_S, stage_timeout_s=STAGE_TIMEOUT_S,
    )
    return build_task(
        modeller_id=client.key.key_id, pods=[p.pod for p in cohort], kind="train", schema_hash=fed.schema_hash,
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
        task = _secure_task(fed, client, fed.participants())
        # Submitted, but the round is not driven: no roster ever comes, so each pod waits after advertising.
        await client.submit_task(task)
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
        probe = build_task(modeller_id=client.key.key_id, pods=list(NAMES), kind="schema-stats",
                           schema_hash=fed.schema_hash)
        await client.submit_task(probe)
        after = await client.wait_results(probe.task_id, list(NAMES), timeout_s=30)
    assert {pod: _outcome(answer) for pod, answer in after.items()} == {name: ("done", None) for name in NAMES}


# -- cohorts the owners did not pin -------------------------------------------------------------


async def _refused_without_a_word(fed: Federation, client: ModellerClient, task: TaskPayload, pods: list[str]) -> None:
    """Each of ``pods`` refuses ``task`` as unknown_peer in a signed result, and nothing of the task's
    round reached the hub (no advertisement, no other stage)."""
    answers = await client.wait_results(task.task_id, pods, timeout_s=30)
    assert {pod: _outcome(answers[pod]) for pod in pods} == {pod: ("refused", "unknown_peer") for pod in pods}
    assert _round_messages(fed, task.task_id) == []
    for pod in pods:
        assert "running" not in _history(fed.agents[pod], task.task_id)


async def test_a_cohort_of_made_up_names_is_refused_unknown_peer(federation: Federation) -> None:
    fed, victim = federation, "pod-a"
    fed.wait_online()
    # Two names no owner pinned and nobody registered, under fresh keys.
    strangers = [Participant(pod=name, key_id=IdentityKey.generate().key_id) for name in ("ghost-1", "ghost-2")]
    async with fed.client() as client:
        task = _secure_task(fed, client, [*fed.participants([victim]), *strangers])
        # The honest hub will not take a task for pods it never saw ...
        with pytest.raises(ModellerError, match="unknown pods"):
            await client.submit_task(task)
        # ... a hostile one delivers the signed task anyway: written into its store, then pushed when the
        # next task for the victim wakes its connection.
        envelope = envelope_bytes(sign_envelope(task, client.key))
        fed.cluster.hub.query(
            "INSERT INTO tasks VALUES (?,?,?,?,?)",
            (task.task_id, task.modeller_id, envelope, json.dumps(task.pods), int(time.time())),
        )
        fed.cluster.hub.query(
            "INSERT INTO deliveries (task_id, pod, seq) SELECT ?, ?, COALESCE(MAX(seq), 0) + 1 FROM deliveries",
            (task.task_id, victim),
        )
        nudge = build_task(
            modeller_id=client.key.key_id, pods=[victim], kind="schema-stats", schema_hash=fed.schema_hash
        )
        await client.submit_task(nudge)
        await _refused_without_a_word(fed, client, task, [victim])


async def test_a_cohort_of_sybils_registered_at_the_hub_is_refused_unknown_peer(federation: Federation) -> None:
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
        registered = {p.name: p.key_id for p in await client.pods()}
        assert {name: registered.get(name) for name in sybils} == {name: key.key_id for name, key in sybils.items()}
        cohort = [*fed.participants([victim]), *(Participant(pod=n, key_id=k.key_id) for n, k in sybils.items())]
        task = _secure_task(fed, client, cohort)
        await client.submit_task(task)  # the hub relays it: every pod named is registered
        await _refused_without_a_word(fed, client, task, [victim])


async def test_a_pinned_peer_named_under_another_key_is_refused_unknown_peer(federation: Federation) -> None:
    fed = federation
    fed.wait_online()
    # pod-c's name with a key id its owner's peers never pinned (what a registry that swapped keys would yield).
    cohort = [*fed.participants(["pod-a", "pod-b"]), Participant(pod="pod-c", key_id=IdentityKey.generate().key_id)]
    async with fed.client() as client:
        task = _secure_task(fed, client, cohort)
        await client.submit_task(task)
        # pod-a and pod-b do not know that key for pod-c; pod-c does not know it for itself.
        await _refused_without_a_word(fed, client, task, list(NAMES))
