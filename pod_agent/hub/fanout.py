"""Fan-out of a task to its cohort: each task encoded once, each pod sent only its own cohort proof.

Owns ``Fanout``, the push path's memory of recent tasks: per task the delivery's JSON up to the proof
(the signed envelope, encoded once, not once per pod) and the cohort tree that gives each pod its entry
and inclusion proof (``protocol.cohort``); and the announcements of newly submitted tasks to the pods
connected to this process, so that a push loop woken by a large fan-out sends at once instead of reading
its pending tasks back from storage. A cohort under ANNOUNCE_FROM_PODS is not announced: its pods read
storage when woken, as on connecting, and so also get any other delivery pending for them. Storage
stays the record of what is pending (a pod that connects, or is woken by another hub process, reads it
there); what travels between processes is ``server._Hub.notify``'s.

Memory: at most ``max_tasks`` prepared tasks are kept (least recently used go first), a pod's
announcements are dropped when it disconnects, and TRIM_AFTER_S after the last fan-out the heap pages
it freed go back to the OS (glibc's ``malloc_trim``: otherwise the process keeps its peak), so the hub's
memory returns to its idle level once a fan-out is over. A task dropped here is prepared again from
storage when needed: its cohort is rebuilt from the pods' registrations and used only if it gives the
signed root.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pod_agent.errors import HubError, ProtocolError
from pod_agent.hub.storage import HubTaskRecord, PodRecord
from pod_agent.protocol import CohortEntry, CohortTree, TaskPayload, cohort_tree

# Prepared tasks kept: a few fan-outs in flight at once; older ones are prepared again on demand.
DEFAULT_MAX_TASKS = 8
# Cohorts from this size are announced to their connected pods: below it a storage read per pod costs little.
ANNOUNCE_FROM_PODS = 64
# Quiet seconds after a fan-out's publication before freed memory is handed back (the pushes and their
# acknowledgements are over by then at 10,000 pods).
TRIM_AFTER_S = 10.0


def _malloc_trim() -> None:
    """Return the free pages at the top and inside the C heap to the OS, where the C library can (glibc).

    The process's own symbols (``CDLL(None)``, dlopen of the main program) include its C library's: no
    ``find_library``, which runs ``ldconfig`` in a subprocess, on the event loop."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


@dataclass(frozen=True)
class PreparedTask:
    """One task's delivery as every pod gets it, less the pod's own proof."""

    task_id: str
    head: str  # '{"type": "task", "task_id": ..., "envelope": ..., "proof": '
    tree: CohortTree

    def delivery(self, pod: str) -> str:
        """The JSON text of ``hub_api.TaskDelivery`` for ``pod``: the shared head and the pod's proof."""
        return self.head + self.tree.proof(pod).model_dump_json() + "}"


def prepare(record: HubTaskRecord, tree: CohortTree) -> PreparedTask:
    head = json.dumps({"type": "task", "task_id": record.task_id, "envelope": record.envelope.decode()})
    return PreparedTask(task_id=record.task_id, head=head[:-1] + ', "proof": ', tree=tree)


def tree_from_registrations(record: HubTaskRecord, pods: Iterable[PodRecord]) -> CohortTree:
    """The task's cohort rebuilt from the pods' registrations (schema hash and key id as listed), checked
    against the signed root; HubError when a pod re-registered since and the root no longer matches."""
    payload = TaskPayload.model_validate(json.loads(record.envelope)["payload"])
    targets = set(record.pods)
    entries = [
        CohortEntry(pod=p.name, schema_hash=p.schema_hash, key_id=p.key_id) for p in pods if p.name in targets
    ]
    try:
        tree = cohort_tree(entries)
    except ProtocolError as exc:
        raise HubError(f"task {record.task_id}: its cohort cannot be rebuilt: {exc}", status=500) from exc
    if tree.commitment != payload.cohort:
        raise HubError(
            f"task {record.task_id}: its pods' registrations changed since it was submitted, so the hub cannot "
            "prove them in its signed cohort; the modeller submits it again",
            status=409,
        )
    return tree


class Fanout:
    """Prepared tasks (bounded, least recently used dropped) and per-pod announcements of new ones."""

    def __init__(self, *, max_tasks: int = DEFAULT_MAX_TASKS) -> None:
        self._max_tasks = max_tasks
        self._prepared: OrderedDict[str, PreparedTask] = OrderedDict()
        self._announced: dict[str, list[PreparedTask]] = {}
        self._trim: asyncio.TimerHandle | None = None

    def keep(self, prepared: PreparedTask) -> PreparedTask:
        self._prepared[prepared.task_id] = prepared
        self._prepared.move_to_end(prepared.task_id)
        while len(self._prepared) > self._max_tasks:
            self._prepared.popitem(last=False)
        return prepared

    def get(self, task_id: str) -> PreparedTask | None:
        prepared = self._prepared.get(task_id)
        if prepared is not None:
            self._prepared.move_to_end(task_id)
        return prepared

    def publish(self, record: HubTaskRecord, tree: CohortTree, *, connected: Callable[[str], bool]) -> None:
        """Prepare ``record`` once and, for a cohort of ANNOUNCE_FROM_PODS or more, announce it to each of its
        pods connected to this process."""
        prepared = self.keep(prepare(record, tree))
        for pod in record.pods if len(record.pods) >= ANNOUNCE_FROM_PODS else ():
            if connected(pod):
                self._announced.setdefault(pod, []).append(prepared)
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER_S, _malloc_trim)

    def take(self, pod: str) -> list[PreparedTask] | None:
        """The tasks announced to ``pod`` since the last take; None when there were none."""
        return self._announced.pop(pod, None)

    def forget(self, pod: str) -> None:
        """``pod`` disconnected: its untaken announcements go (it reads storage when it reconnects)."""
        self._announced.pop(pod, None)
