"""Modeller routes of the hub: the pods a modeller may task, model versions it publishes and who may read them,
and its tasks: submitted with their cohort, fanned out, and their status, results and long-polled progress.

A task is stored with its cohort's pods and pushed at once to those connected here (``fanout.Fanout``); another
hub process is told of a large cohort's task and pushes it to its own pods (``HubState.on_cluster_key``). A
model's source is served to its publisher, to pods a task of the publisher targets, and to anyone if published
``public``. A modeller reads only its own tasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from pod_agent.errors import HubError, ProtocolError
from pod_agent.hub.auth import SIGNER, SIGNER_POD, body_of, signer_modeller
from pod_agent.hub.blob_routes import require_uploaded
from pod_agent.hub.fanout import ANNOUNCE_FROM_PODS, collector_paused, fanout_key
from pod_agent.hub.hubstate import HubState, hub_of, task_wakeup_key
from pod_agent.hub.reading import long_poll_query, opened, parse_body
from pod_agent.hub.storage import BlobRefRecord, DeliveryRecord, HubTaskRecord, ModelRecord, PodRecord
from pod_agent.protocol import (
    MAX_LISTED_ROTATIONS,
    CohortEntry,
    ModelPublication,
    PublicKey,
    TaskPayload,
    TaskSubmission,
    cohort_tree,
    envelope_bytes,
    source_sha256,
)

# Cohort entries of a submission validated per pass of the event loop (about 2.5 ms CPU): ``parse_submission``.
SUBMISSION_SLICE = 1000
_COHORT_SLICE: TypeAdapter[list[CohortEntry]] = TypeAdapter(list[CohortEntry])

routes = web.RouteTableDef()


async def parse_submission(raw: bytes) -> TaskSubmission:
    """``parse_body(TaskSubmission, raw)`` with a large cohort's entries validated SUBMISSION_SLICE at a time, the
    event loop served in between: 10,000 entries at once held it 20-30 ms CPU (90-110 ms on a busy host), the
    longest wait of a heartbeat's answer in a fan-out. The envelope is validated from JSON, as the whole would
    be; the entries, strings only, from what ``json.loads`` made of them (no more lenient: a string that JSON
    mode refuses, such as a lone surrogate, is refused as a Python string too). On any error the body is parsed
    whole again, so that the error is named as for any body."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    cohort = data.get("cohort") if isinstance(data, dict) else None
    if not isinstance(cohort, list) or len(cohort) <= SUBMISSION_SLICE:
        return parse_body(TaskSubmission, raw)  # type: ignore[no-any-return]
    try:
        head = TaskSubmission.model_validate_json(json.dumps({**data, "cohort": cohort[:SUBMISSION_SLICE]}))
        entries = list(head.cohort)
        for start in range(SUBMISSION_SLICE, len(cohort), SUBMISSION_SLICE):
            await asyncio.sleep(0)
            entries += _COHORT_SLICE.validate_python(cohort[start:start + SUBMISSION_SLICE])
        return TaskSubmission.model_validate({"envelope": head.envelope, "cohort": entries})
    except ValidationError:
        return parse_body(TaskSubmission, raw)  # type: ignore[no-any-return]


@routes.get("/v1/pods", name="pods_list")
async def _pods_list(request: web.Request) -> web.Response:
    hub = hub_of(request)
    now = hub.now()
    pods = await _admitted_pods(hub)
    rotations = await hub.db(hub.storage.pod_rotations)
    return web.json_response(
        {
            "pods": [
                {
                    "name": p.name, "key_id": p.key_id, "public_key": p.public_key, "schema": p.schema,
                    "schema_hash": p.schema_hash, "row_count": p.row_count, "sandbox_level": p.sandbox_level,
                    "last_seen": p.last_seen, "online": hub.online(p, now),
                    "rotations": [
                        json.loads(statement) for statement in rotations.get(p.name, [])[-MAX_LISTED_ROTATIONS:]
                    ],
                }
                for p in pods
            ]
        }
    )


async def _admitted_pods(hub: HubState) -> list[PodRecord]:
    """Registered pods less those awaiting approval (modellers neither see nor task them)."""
    pods: list[PodRecord] = await hub.db(hub.storage.list_pods)
    pending = {p.key_id for p in await hub.db(hub.storage.pending_keys)}
    return [p for p in pods if p.key_id not in pending]


@routes.post("/v1/models", name="models_publish")
async def _models_publish(request: web.Request) -> web.Response:
    hub = hub_of(request)
    modeller = await signer_modeller(request)
    pub: ModelPublication = parse_body(ModelPublication, body_of(request))
    if source_sha256(pub.source) != pub.sha256:
        raise HubError("model source does not hash to the given sha256", status=400)
    if pub.weights_sha256 is not None:
        await require_uploaded(hub, pub.weights_sha256, modeller.key_id, size_bytes=None, what="model weights")
    weights = [] if pub.weights_sha256 is None else [
        BlobRefRecord(pub.weights_sha256, "model", f"{pub.name}@{pub.version}", modeller.key_id)
    ]
    outcome = await hub.db(
        hub.storage.put_model,
        ModelRecord(
            name=pub.name, version=pub.version, style=pub.style, class_name=pub.class_name, source=pub.source,
            sha256=pub.sha256, weights_sha256=pub.weights_sha256, owner=modeller.key_id, created_at=hub.now(),
            public=pub.public,
        ),
        refs=weights,
    )
    return web.json_response({"outcome": outcome}, status=201 if outcome == "stored" else 200)


@routes.get("/v1/models/{name}/{version}", name="models_get")
async def _models_get(request: web.Request) -> web.Response:
    hub = hub_of(request)
    model = await hub.db(hub.storage.get_model, request.match_info["name"], request.match_info["version"])
    label = f"{request.match_info['name']}@{request.match_info['version']}"
    if model is None or not await _may_read_model(request, model):
        # One answer for absent and not shared, so a stranger learns nothing of what exists.
        raise HubError(
            f"no model {label} shared with this key: a model is served to its publisher and to the pods its "
            "tasks target, or to everyone if published with --public",
            status=404,
        )
    return web.json_response(
        {
            "name": model.name, "version": model.version, "style": model.style, "class_name": model.class_name,
            "source": model.source, "sha256": model.sha256, "weights_sha256": model.weights_sha256,
        }
    )


async def _may_read_model(request: web.Request, model: ModelRecord) -> bool:
    if model.public or model.owner == request[SIGNER]:
        return True
    pod = request[SIGNER_POD]
    if pod is None:
        return False
    hub = hub_of(request)
    return bool(await hub.db(hub.storage.pod_targeted_by, pod.name, model.owner))


@routes.post("/v1/tasks", name="tasks_submit")
async def _tasks_submit(request: web.Request) -> web.Response:
    """Store a signed task with its cohort; prepare its push once and wake its pods (no automatic full
    collection meanwhile: ``fanout.collector_paused``)."""
    with collector_paused():
        return await _take_task(request)


async def _take_task(request: web.Request) -> web.Response:
    hub = hub_of(request)
    modeller = await signer_modeller(request)
    submission = await parse_submission(body_of(request))
    envelope, task = opened(
        submission.envelope.model_dump(), TaskPayload, PublicKey.from_b64(modeller.public_key), what="task"
    )
    if task.modeller_id != modeller.key_id:
        raise HubError("task modeller_id differs from the signer's key id", status=400)
    # The cohort's hashing (in a thread: 75 ms at 10,000 pods, while the loop answers heartbeats) and the look-up
    # of its pods' admission (a round trip) need nothing of each other: they run at once, checked in this order.
    admission: Awaitable[set[str]] = hub.db(hub.storage.admitted, [entry.pod for entry in submission.cohort])
    hashed, admitted = await asyncio.gather(
        asyncio.to_thread(cohort_tree, submission.cohort), admission, return_exceptions=True
    )
    if isinstance(hashed, ProtocolError):
        raise HubError(f"task cohort: {hashed}", status=400) from hashed
    if isinstance(hashed, BaseException):
        raise hashed
    if isinstance(admitted, BaseException):
        raise admitted
    tree = hashed
    if tree.commitment != task.cohort:
        raise HubError(
            f"the {len(submission.cohort)} cohort entries do not give the task's signed cohort root "
            f"{task.cohort.root[:16]} (size {task.cohort.size}): send the entries the task was built from",
            status=400,
        )
    unknown = sorted(set(tree.pods) - admitted)
    if unknown:
        raise HubError(f"unknown pods {unknown[:20]}; list them with `pod-agent modeller pods`", status=404)
    record = HubTaskRecord(
        task_id=task.task_id, modeller_id=modeller.key_id,
        envelope=envelope_bytes(envelope), pods=tree.pods, created_at=hub.now(),
    )
    # SCAFFOLD's server control variate is pinned and served to the task's pods exactly like its weights. A task
    # is stored with its pinned blobs' references or not at all (BlobMissing, 424: the modeller uploads them).
    pinned = [ref for ref in (task.weights, task.scaffold.control if task.scaffold else None) if ref is not None]
    for ref in pinned:
        await require_uploaded(hub, ref.sha256, modeller.key_id, size_bytes=ref.size_bytes, what="pinned")
    refs = [BlobRefRecord(ref.sha256, "weights", task.task_id) for ref in pinned]
    outcome = await hub.db(hub.storage.add_task, record, refs=refs)
    prepared = hub.fanout.publish(record, tree)
    if len(record.pods) >= ANNOUNCE_FROM_PODS:
        hub.cluster.publish(fanout_key(record.task_id))  # the other processes push it to their pods
        await hub.fanout.push(prepared, record.pods, wake=hub.wake_local)
    else:
        for pod in record.pods:
            hub.notify(pod)
    return web.json_response(
        {"task_id": task.task_id, "outcome": outcome}, status=201 if outcome == "stored" else 200
    )


async def _owned_task(request: web.Request) -> HubTaskRecord:
    hub = hub_of(request)
    modeller = await signer_modeller(request)
    task = await hub.db(hub.storage.get_task, request.match_info["task_id"])
    if task is None or task.modeller_id != modeller.key_id:
        raise HubError(f"no task {request.match_info['task_id']} submitted by this modeller", status=404)
    return task  # type: ignore[no-any-return]


def _status_body(task: HubTaskRecord, deliveries: list[DeliveryRecord]) -> dict[str, Any]:
    """A task's status as ``hub_api.TaskStatusReply`` (and ``TaskWaitReply``) carry it."""
    return {
        "task_id": task.task_id,
        "created_at": task.created_at,
        "pods": {
            d.pod: {
                "acked": d.acked_at is not None, "refusal": d.refusal, "result": d.result_status,
                "progress": d.progress,
            }
            for d in deliveries
        },
        "finished": sum(1 for d in deliveries if d.result_status is not None or d.refusal is not None),
    }


@routes.get("/v1/tasks/{task_id}", name="tasks_status")
async def _tasks_status(request: web.Request) -> web.Response:
    hub = hub_of(request)
    task = await _owned_task(request)
    return web.json_response(_status_body(task, await hub.db(hub.storage.deliveries, task.task_id)))


@routes.get("/v1/tasks/{task_id}/wait", name="tasks_wait")
async def _tasks_wait(request: web.Request) -> web.Response:
    """Long poll for the task's modeller: its status once more than ``after`` of its pods have finished
    (a result or a refusal), or when the wait ends (at most MAX_LONG_POLL_S), so a modeller learns of a
    result when it is stored rather than at its next poll."""
    hub = hub_of(request)
    task = await _owned_task(request)
    wait_s, after = long_poll_query(request, what="a count of finished pods")
    deliveries = await hub.long_poll(
        task_wakeup_key(task.task_id), wait_s,
        fetch=lambda: hub.db(hub.storage.deliveries, task.task_id),
        ready=lambda ds: sum(1 for d in ds if d.result_status is not None or d.refusal is not None) > after,
    )
    return web.json_response(_status_body(task, deliveries))


@routes.get("/v1/tasks/{task_id}/results", name="tasks_results")
async def _tasks_results(request: web.Request) -> web.Response:
    hub = hub_of(request)
    task = await _owned_task(request)
    results = await hub.db(hub.storage.results, task.task_id)
    return web.json_response({"results": [json.loads(r.envelope) for r in results]})
