"""The long-running agent: one asyncio TaskGroup of named loops around the pod's state.

Owns start-up (config already validated: identity key, state DB, datasource and
schema, sandbox level), the loops and the shutdown sequence:

    hub-link   ``hublink.HubLink``: register (or update) the pod, then hold a WebSocket
               (or long poll): heartbeats, tasks in; reconnect forever through ``Backoff``,
               registering again when the registration changed or the hub refuses the session
    intake     verify each delivered task (policy.TaskVerifier, which records it in
               state), acknowledge it. A refusal carries only its code: a task the
               verifier recorded (signature verified, within its validity window,
               refused by policy) is refused by a signed result (status refused, reason
               the code) through the outbox, so the modeller can tell the pod refused,
               not the hub; any other (refused before its signature verified, malformed,
               outside its lifetime, a replay) by the bare code (``HubClient.refuse``,
               best effort). A not-yet-valid task is neither refused nor acknowledged:
               the hub offers it again.
    runner     take the oldest accepted task from the state DB (the queue lives
               there, not in memory) and run it through ``TaskPipeline``; the signed
               result goes to the outbox in the same transaction that ends the task
               (``training.max_concurrent_tasks`` runners, default one)
    outbox     upload signed results (and blobs) until the hub acknowledges them;
               idempotent by task id, so a restart after kill -9 delivers each once
    progress   rate-limited progress events to the hub, best effort
    upkeep     purge expired nonces, systemd watchdog pings
    reviews    (security.review) tasks held pending_review: refuse those whose expiry
               passed (expired), send the signed refusal of a rejected one, wake the
               runner once `pod-agent review approve` queued one (the CLI writes the state)
    policy     SIGHUP (`systemctl reload pod-agent`): re-read the policy sections of
               pod.toml (``security`` but its sandbox keys, ``privacy``) and swap the
               verifier, trusted peers and modeller keys; a task running keeps what it
               read. An invalid file is logged and refused: the policy in force stays.

The daemon talks to the hub only through ``HubClient``'s typed calls: no URLs, no
aiohttp types, no raw replies here. A hub that misbehaves (a reply oversized, slow,
not UTF-8 JSON or wrongly shaped) is an outage like a hub that is down: logged,
backed off, retried. Every loop runs under a last-resort guard (``_guarded``): an
exception nobody expected is logged by type and place (never its text, which may
quote the hub or a model) and the loop starts again after backoff, so that one bad
message cannot end the TaskGroup and with it the agent.

SIGTERM/SIGINT: stop taking tasks, give the running task ``training.shutdown_grace_s``
to finish (then cancel it: it stays ``running`` in the state DB and is queued again
at the next start, except a secure train task, whose round secrets lived in memory
only: it has dropped out of its round and is failed as ``round_interrupted``), close
the connection, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pod_agent.agent.backoff import RETRYABLE, Backoff
from pod_agent.agent.hubclient import HubClient
from pod_agent.agent.hublink import HubLink
from pod_agent.agent.pipeline import PipelineOutput, TaskPipeline
from pod_agent.agent.progress import ProgressLimiter
from pod_agent.agent.secure_round import PodRoundContext
from pod_agent.config import PodSettings, load_settings
from pod_agent.data import Datasource, Schema, open_datasource
from pod_agent.errors import (
    CodedError,
    ConfigError,
    DataError,
    HubError,
    HubRejected,
    PodAgentError,
    ProtocolError,
    SandboxError,
    SecAggError,
    StateError,
    TaskFailed,
    TaskRefused,
)
from pod_agent.ops import AgentMetrics, HealthServer, Notifier, Readiness, task_context
from pod_agent.policy import (
    FailureCode,
    PrivacyFloor,
    RefusalCode,
    TaskVerifier,
    TrustedPeers,
    budget_report,
    failure_code_for,
    modeller_keys,
)
from pod_agent.protocol import (
    Envelope,
    HeartbeatAck,
    HubPush,
    IdentityKey,
    PodRegistration,
    ProgressEvent,
    PublicKey,
    ResultPayload,
    RoundMessages,
    TaskDelivery,
    TaskKind,
    TaskPayload,
    canonical_json,
    envelope_bytes,
    parse_envelope,
    passphrase_from_env,
    sign_envelope,
)
from pod_agent.state import OutboxEntry, PodState, TaskRecord, TaskStatus

_log = logging.getLogger(__name__)

# Delivered tasks waiting for intake; the hub re-delivers anything not acknowledged, so a full queue only delays.
INBOX_SIZE = 256
# Characters of envelopes waiting for intake: past this the hub link stops reading, so that a hub pushing
# large tasks faster than intake refuses them cannot fill memory (256 tasks at the 8 MiB reply cap: 2 GiB).
INBOX_CHARS = 16 * 1024 * 1024
# Progress events waiting to be sent; when full, new ones are dropped (progress is best effort).
PROGRESS_QUEUE_SIZE = 64
# Idle loops re-check the state DB this often even without a wake-up (a missed wake-up only delays).
IDLE_RECHECK_S = 30.0
# Expired nonces are purged this often.
PURGE_INTERVAL_S = 600.0
# The review queue is looked at this often: `pod-agent review` decides in another process, through the state
# DB, so an approved task starts (and a rejected one is answered) within this.
REVIEW_POLL_S = 2.0
# Sections a reload does not apply (the hub link, datasource, sandbox and ops are built once at start).
_RESTART_SECTIONS = ("pod", "hub", "datasource", "sandbox_limits", "training", "ops")
# A progress event that cannot be sent, encoded or counted (the audit export's bytes) is dropped, never fatal.
_PROGRESS_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE, ProtocolError, StateError)


def _now() -> int:
    return int(time.time())


def sandbox_level_in_force(settings: PodSettings) -> str:
    """The level tasks will run under, or ``unavailable`` when the configured one cannot be had."""
    level = settings.security.sandbox
    if level == "none":
        return "none"
    from pod_agent.sandbox import plan_layers, probe_layers

    try:
        plan_layers(level, probe_layers(settings.security))
    except SandboxError as exc:
        _log.warning("sandbox level %s unavailable: %s (train/evaluate/predict tasks will fail)", level, exc)
        return "unavailable"
    return level


@dataclass(frozen=True)
class _PolicyParts:
    """What the owner's policy builds: swapped whole when SIGHUP reloads it."""

    verifier: TaskVerifier
    round_context: PodRoundContext


def _policy_parts(settings: PodSettings, *, key: IdentityKey, schema: Schema, state: PodState) -> _PolicyParts:
    peers = TrustedPeers.from_settings(settings.privacy, own_name=settings.pod.name, own_key=key.public)
    verifier = TaskVerifier(
        security=settings.security, privacy=settings.privacy, pod_name=settings.pod.name,
        schema_hash=schema.hash(), row_count=schema.row_count, nonces=state,
    )
    keys = {
        public.key_id: public
        for public in (PublicKey.from_b64(signing.public_key) for modeller in settings.security.modellers
                       for signing in modeller.signing_keys())
    }
    return _PolicyParts(
        verifier=verifier,
        round_context=PodRoundContext(me=settings.pod.name, key=key, peers=peers, state=state, modeller_keys=keys),
    )


def _rotation_statement(state_dir: Path, key: IdentityKey) -> Envelope | None:
    """The rotation statement `pod-agent keys rotate` wrote for this key, if any (a small file, read once)."""
    path = state_dir / f"key-rotation-{key.key_id[:16]}.json"
    try:
        return parse_envelope(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ProtocolError) as exc:
        _log.warning(
            "key rotation statement %s unusable (%s); the hub may refuse this key for the pod's name", path, exc
        )
        return None


class Agent:
    """The daemon's parts, opened once; ``run`` drives the loops until ``stop`` is set."""

    def __init__(
        self,
        settings: PodSettings,
        *,
        key: IdentityKey,
        state: PodState,
        datasource: Datasource,
        schema: Schema,
        sandbox_level: str,
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.key = key
        self.state = state
        self.schema = schema
        self.sandbox_level = sandbox_level
        policy = _policy_parts(settings, key=key, schema=schema, state=state)
        self.verifier = policy.verifier
        self._blob_dir = settings.pod.state_dir / "outbox"
        self.pipeline = TaskPipeline(
            settings=settings, datasource=datasource, schema=schema, work_root=settings.pod.state_dir / "work",
            outbox_dir=self._blob_dir, secure_round=policy.round_context,
        )
        # After `pod-agent keys rotate`: the statement its old key signed, so the hub moves the name to this key.
        self._rotation = _rotation_statement(settings.pod.state_dir, key)
        # The pod.toml that SIGHUP re-reads; None: settings built in code, nothing to reload.
        self.config_path = config_path
        self._reload = asyncio.Event()
        self.metrics = AgentMetrics()
        self.metrics.set_sandbox_level(sandbox_level)
        self.readiness = Readiness(sandbox_required=settings.security.sandbox, sandbox_level=sandbox_level)
        self.notifier = Notifier.from_env()
        self.progress = ProgressLimiter()
        self._modellers = modeller_keys(settings.security.modellers)
        self._inbox = _Inbox(max_items=INBOX_SIZE, max_chars=INBOX_CHARS)
        self._progress_queue: asyncio.Queue[ProgressEvent] = asyncio.Queue(PROGRESS_QUEUE_SIZE)
        self._runner_wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._stop = asyncio.Event()

    @classmethod
    async def open(cls, settings: PodSettings, *, config_path: Path | None = None) -> Agent:
        """Open key, state, datasource and schema (blocking work off the loop)."""
        state_dir = settings.pod.state_dir
        await asyncio.to_thread(state_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        passphrase = passphrase_from_env(settings.pod.identity_key_passphrase_env)
        key = await asyncio.to_thread(IdentityKey.load, settings.pod.identity_key_path, passphrase)
        state = await asyncio.to_thread(PodState.open, state_dir / "state.sqlite")
        try:
            datasource = await asyncio.to_thread(open_datasource, settings.datasource)
            schema = await asyncio.to_thread(datasource.schema)
            level = await asyncio.to_thread(sandbox_level_in_force, settings)
        except BaseException:
            state.close()
            raise
        return cls(
            settings, key=key, state=state, datasource=datasource, schema=schema, sandbox_level=level,
            config_path=config_path,
        )

    def close(self) -> None:
        self.state.close()
        self.notifier.close()

    def _fail_interrupted_rounds(self) -> None:
        """A secure train task left running by the last process lost its round secrets (memory only):
        it dropped out of its round, and is failed rather than run again from the same weights."""
        for record in self.state.list_tasks(TaskStatus.RUNNING):
            payload = record.payload()
            if payload.kind != "train" or payload.secagg is None:
                continue
            code = FailureCode.ROUND_INTERRUPTED.value
            result = ResultPayload(
                task_id=payload.task_id, pod=self.settings.pod.name, kind=payload.kind, status="failed",
                reason=code, produced_at=_now(),
            )
            self.state.finish(
                payload.task_id, status="failed", result_json=envelope_bytes(sign_envelope(result, self.key)).decode(),
                reason=code, now=_now(),
            )
            _log.warning("secure round of task %s was interrupted by the last shutdown; failed as %s",
                         payload.task_id, code)

    # -- the loops ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, reload: asyncio.Event | None = None) -> None:
        """Run every loop until ``stop`` is set, then shut down in order (see module docstring).
        ``reload`` set (by SIGHUP) re-reads the policy from ``config_path``."""
        self._stop = stop
        self._reload = reload if reload is not None else self._reload
        await asyncio.to_thread(self._blob_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(self._fail_interrupted_rounds)
        await self.pipeline.discard_leftovers()
        requeued = await asyncio.to_thread(self.state.requeue_running, now=_now())
        if requeued:
            _log.info("requeued %d task(s) interrupted by the last shutdown", len(requeued))
        await asyncio.to_thread(self._privacy_gauges)
        health = self._health_server()
        async with contextlib.AsyncExitStack() as stack:
            if health is not None:
                await stack.enter_async_context(health)
            hub = await stack.enter_async_context(HubClient(self.settings.hub, self.key))
            self.pipeline.fetcher = _HubFetcher(hub)
            await self.pipeline.start()
            stack.push_async_callback(self.pipeline.aclose)
            loops: dict[str, Callable[[], Awaitable[None]]] = {
                "hub-link": lambda: self._hub_link(hub),
                "intake": lambda: self._intake(hub),
                "outbox": lambda: self._outbox(hub),
                "progress": lambda: self._progress(hub),
                "upkeep": self._upkeep,
                "reviews": self._reviews,
                "policy": self._policy_reloads,
            }
            async with asyncio.TaskGroup() as group:
                runners = [
                    group.create_task(
                        self._guarded(f"runner-{i}", functools.partial(self._runner, i)), name=f"runner-{i}"
                    )
                    for i in range(self.settings.training.max_concurrent_tasks)
                ]
                others = [group.create_task(self._guarded(name, loop), name=name) for name, loop in loops.items()]
                group.create_task(self._shutdown(hub, runners, others), name="shutdown")
        self.notifier.stopping("stopped")

    async def _shutdown(
        self, hub: HubClient, runners: list[asyncio.Task[None]], others: list[asyncio.Task[None]]
    ) -> None:
        await self._stop.wait()
        grace_s = self.settings.training.shutdown_grace_s
        deadline = asyncio.get_running_loop().time() + grace_s
        _log.info("stopping: no new tasks; waiting up to %.0f s for a running task", grace_s)
        self.notifier.stopping("stopping")
        self._runner_wake.set()
        _, pending = await asyncio.wait(runners, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            _log.warning("grace period over: cancelled the running task; it runs again at the next start")
            await asyncio.wait(pending)
        for task in others:
            task.cancel()
        await asyncio.wait(others)
        # Results produced just before the stop: try to hand them over within what is left of the grace.
        remaining_s = deadline - asyncio.get_running_loop().time()
        # Read outside the timeout, so that an empty outbox never times out as "results left".
        entries = await asyncio.to_thread(self.state.pending_results)
        if remaining_s > 0 and entries:
            try:
                await asyncio.wait_for(self._flush_outbox(hub, entries), remaining_s)
            except RETRYABLE as exc:
                _log.info("results left in the outbox for the next start (%s)", type(exc).__name__)

    async def _flush_outbox(self, hub: HubClient, entries: list[OutboxEntry]) -> None:
        for entry in entries:
            await self._deliver(hub, entry)

    async def _guarded(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` until it returns; an unexpected exception restarts it after backoff (the last resort
        that keeps the agent up), unless the agent is stopping by then. Cancellation, which is how shutdown
        ends the loops, passes through."""
        backoff = Backoff(self.settings.hub.backoff_initial_s, self.settings.hub.backoff_cap_s)
        while True:
            started = time.monotonic()
            try:
                await loop()
                return
            except Exception as exc:  # noqa: BLE001 - the last resort: a bug or a hostile reply must not end the agent
                if time.monotonic() - started > backoff.cap_s:
                    backoff.reset()  # a loop that ran well for a while starts its backoff afresh
                _log.error("%s loop ended on an unexpected %s; restarting it (a pod-agent bug, please report it)",
                           name, _where(exc))
            await backoff.wait(self._stop)
            if self._stop.is_set():
                return

    def _health_server(self) -> HealthServer | None:
        ops = self.settings.ops
        if ops.health_port == 0:
            return None
        return HealthServer(metrics=self.metrics, readiness=self.readiness, host=ops.health_host, port=ops.health_port,
                            pod=self.settings.pod.name)

    async def _upkeep(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.notifier.watchdog_loop(), name="watchdog")
            while True:
                purged = await asyncio.to_thread(self.state.purge_seen, now=_now())
                if purged:
                    _log.info("purged %d expired nonce(s)", purged)
                await asyncio.sleep(PURGE_INTERVAL_S)

    # -- hub link ---------------------------------------------------------------------------

    def _registration(self) -> PodRegistration:
        token = self.settings.hub.enrolment_token
        return PodRegistration(
            name=self.settings.pod.name,
            public_key=self.key.public.to_b64(),
            schema_public=self.schema.public(self.settings.privacy.share_categories),
            schema_hash=self.schema.hash(),
            row_count=self.schema.row_count,
            sandbox_level=self.sandbox_level,
            heartbeat_s=self.settings.hub.heartbeat_s,
            enrolment_token=token.get_secret_value() if token is not None else None,
            rotation=self._rotation,
        )

    async def _hub_link(self, hub: HubClient) -> None:
        listener = _LinkState(hub, pod=self.settings.pod.name, readiness=self.readiness, metrics=self.metrics,
                              notifier=self.notifier, inbox=self._inbox)
        await HubLink(hub, self.settings.hub, registration=self._registration, listener=listener, stop=self._stop).run()

    # -- intake ---------------------------------------------------------------------------

    async def _intake(self, hub: HubClient) -> None:
        while True:
            delivery = await self._inbox.get()
            try:
                await self._admit(hub, delivery)
            except StateError:
                _log.exception("state database error while admitting a task; the hub will deliver it again")
            finally:
                self._inbox.done(delivery)

    async def _admit(self, hub: HubClient, delivery: TaskDelivery) -> None:
        known = await asyncio.to_thread(self.state.get_task, delivery.task_id)
        if known is not None and known.status is not TaskStatus.DELIVERED:
            # At-least-once delivery: the hub resent a task whose acknowledgement it missed.
            await self._ack(hub, delivery.task_id)
            return
        try:
            verified = await asyncio.to_thread(
                self.verifier.verify, delivery.envelope.encode(), proof=delivery.proof, now=_now()
            )
        except TaskRefused as refusal:
            if refusal.code == RefusalCode.NOT_YET_VALID.value:
                # Not recorded and not acknowledged: the hub offers it again, and once valid it runs.
                _log.info("task not yet valid; leaving it with the hub for now", extra={"code": refusal.code})
                return
            await self._refused(hub, delivery, refusal)
            return
        task_id = verified.payload.task_id
        if verified.pending_review:
            with task_context(task_id=task_id, modeller_key_id=verified.payload.modeller_id):
                _log.warning("task held for the owner's review of its model: `pod-agent review show %s`, then "
                             "`pod-agent review approve|reject %s`", task_id, task_id,
                             extra={"kind": verified.payload.kind})
            await self._ack(hub, delivery.task_id)
            self._send_progress(ProgressEvent(task_id=task_id, stage="pending_review"))
            return
        with task_context(task_id=task_id, modeller_key_id=verified.payload.modeller_id):
            _log.info("task accepted", extra={"kind": verified.payload.kind})
        await self._ack(hub, delivery.task_id)
        self._send_progress(ProgressEvent(task_id=task_id, stage="queued"))
        self._runner_wake.set()

    async def _refused(self, hub: HubClient, delivery: TaskDelivery, refusal: TaskRefused) -> None:
        self.metrics.refused(refusal.code)
        _log.warning("task refused: %s", refusal.code, extra={"code": refusal.code})
        _log.debug("refusal detail: %s", refusal.detail)
        recorded = None
        if refusal.task_id is not None and refusal.code != RefusalCode.REPLAY.value:
            recorded = await asyncio.to_thread(self.state.get_task, refusal.task_id)
        if recorded is not None and recorded.status is TaskStatus.REFUSED:
            # Signed refusal: the modeller can tell the pod (not the hub) refused. The stored kind
            # is the verified payload's own, so the envelope need not be parsed again.
            await asyncio.to_thread(self._queue_refusal, recorded, refusal.code)
            self._outbox_wake.set()
        else:
            with contextlib.suppress(*RETRYABLE):
                await hub.refuse(delivery.task_id, refusal.code)
        await self._ack(hub, delivery.task_id)

    def _queue_refusal(self, recorded: TaskRecord, code: str) -> None:
        """Put the pod's signed refusal of a stored refused task in the outbox. The stored kind is the
        verified payload's own, so the envelope need not be parsed again."""
        result = ResultPayload(
            task_id=recorded.task_id, pod=self.settings.pod.name, kind=cast(TaskKind, recorded.kind),
            status="refused", reason=code, produced_at=_now(),
        )
        self.state.finish(
            recorded.task_id, status="refused", result_json=envelope_bytes(sign_envelope(result, self.key)).decode(),
            now=_now(),
        )

    async def _ack(self, hub: HubClient, task_id: str) -> None:
        try:
            await hub.ack(task_id)
        except RETRYABLE as exc:
            _log.info("acknowledgement of task %s not sent (%s); the hub will deliver it again", task_id, exc)

    # -- runner ---------------------------------------------------------------------------

    async def _runner(self, index: int) -> None:
        while not self._stop.is_set():
            record = await asyncio.to_thread(self.state.claim_next, now=_now())
            if record is None:
                self._runner_wake.clear()
                await _wait_any(self._runner_wake, self._stop, timeout_s=IDLE_RECHECK_S)
                continue
            await self._run_one(record)

    async def _run_one(self, record: TaskRecord) -> None:
        payload = record.payload()
        started = time.monotonic()
        with task_context(task_id=payload.task_id, modeller_key_id=payload.modeller_id):
            status, reason, output = await self._execute(payload)
            result = ResultPayload(
                task_id=payload.task_id, pod=self.settings.pod.name, kind=payload.kind, status=status, reason=reason,
                metrics=output.metrics if output else {}, n_rows=output.n_rows if output else 0,
                blob=output.blob if output else None,
                produced_at=_now(),
            )
            envelope = envelope_bytes(sign_envelope(result, self.key)).decode()
            await asyncio.to_thread(
                self.state.finish, payload.task_id, status=status, result_json=envelope,
                blob_path=output.blob_path if output else None, reason=reason, now=_now(),
            )
            await asyncio.to_thread(self._privacy_gauges)
            elapsed = time.monotonic() - started
            self.metrics.task_finished(payload.kind, status, elapsed)
            _log.info("task %s in %.2f s", status, elapsed, extra={"outcome": status, "reason": reason or "-"})
        self._send_progress(ProgressEvent(task_id=payload.task_id, stage="done" if status == "done" else "failed"))
        self._outbox_wake.set()

    def _privacy_gauges(self) -> None:
        """Each dp budget's epsilon charged and left, for /metrics (no budgets: nothing, and no accountant)."""
        for use in budget_report(self.settings.privacy, self.settings.security.modellers, self.state.ledger()):
            self.metrics.set_epsilon(use.budget, spent=use.spent, left=use.left)

    async def _execute(self, payload: TaskPayload) -> tuple[Any, str | None, PipelineOutput | None]:
        modeller = self._modellers.get(payload.modeller_id)
        if modeller is None:
            return "failed", FailureCode.UNKNOWN_SIGNER.value, None
        # The floor as configured when the task runs (a restart after a config change applies it to queued tasks).
        floor = PrivacyFloor.for_modeller(self.settings.privacy, modeller)
        try:
            output = await self.pipeline.run(payload, floor=floor, on_progress=self._send_progress)
        except CodedError as exc:
            code = failure_code_for(exc)
            _log.warning("task failed: %s", code, extra={"code": exc.code})
            return "failed", code, None
        except DataError:
            _log.warning("task failed: the data could not be prepared for this selection")
            return "failed", FailureCode.DATA_ERROR.value, None
        except SecAggError:
            _log.warning("task failed: the update could not be protected for this round")
            return "failed", FailureCode.SECAGG_ERROR.value, None
        except PodAgentError:
            _log.exception("task failed")
            return "failed", FailureCode.INTERNAL_ERROR.value, None
        except Exception as exc:  # noqa: BLE001 - a bug fails its task, not the agent
            # Escaping would end the runner and the agent; the task, requeued at the next start,
            # would end it again. The message is left out: it may quote what the model returned.
            _log.error("task failed on an unexpected %s; this is a pod-agent bug, please report it", _where(exc))
            return "failed", FailureCode.INTERNAL_ERROR.value, None
        return "done", None, output

    # -- review queue ---------------------------------------------------------------------

    async def _reviews(self) -> None:
        while True:
            await asyncio.to_thread(self._review_upkeep)
            await _wait_any(self._stop, timeout_s=REVIEW_POLL_S)

    def _review_upkeep(self) -> None:
        """Expire, announce and release what the review queue decided since the last look."""
        for task_id in self.state.expire_reviews(now=_now()):
            _log.warning("task %s expired while its model waited for review; refused as expired", task_id)
        for record in self.state.unsent_review_refusals():
            self._queue_refusal(record, record.reason or RefusalCode.REVIEW_REJECTED.value)
            self.metrics.refused(record.reason or RefusalCode.REVIEW_REJECTED.value)
            self._outbox_wake.set()
        if self.state.list_tasks(TaskStatus.ACCEPTED, limit=1):
            # An approval queued its task; a runner already busy just finds the wake-up spent.
            self._runner_wake.set()

    # -- live policy ----------------------------------------------------------------------

    async def _policy_reloads(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload_policy()

    async def reload_policy(self) -> bool:
        """Re-read the policy sections of ``config_path``; True when the new policy is in force.

        Built off the event loop, swapped on it: intake verifies with the old verifier or the new one,
        never half of each. Invalid (a ConfigError): logged, and the policy in force stays.
        """
        if self.config_path is None:
            _log.warning("reload asked, but this agent was not started from a pod.toml; nothing to re-read")
            return False
        try:
            settings, policy = await asyncio.to_thread(self._read_policy, self.config_path)
        except ConfigError as exc:
            _log.error("reload refused, the policy in force stays: %s", exc)
            return False
        self.settings = settings
        self.verifier = policy.verifier
        self._modellers = modeller_keys(settings.security.modellers)
        self.pipeline.use_policy(settings, policy.round_context)
        await asyncio.to_thread(self._privacy_gauges)
        _log.info("policy reloaded from %s: %d modeller(s), review %s", self.config_path,
                  len(settings.security.modellers), "on" if settings.security.review else "off")
        return True

    def _read_policy(self, path: Path) -> tuple[PodSettings, _PolicyParts]:
        fresh = load_settings(path)
        old = self.settings
        security = fresh.security.model_copy(
            update={"sandbox": old.security.sandbox, "sandbox_user": old.security.sandbox_user}
        )
        later = [name for name in _RESTART_SECTIONS if getattr(fresh, name) != getattr(old, name)]
        if security != fresh.security:
            later.append("security.sandbox/sandbox_user")
        if later:
            _log.warning("reload applies the policy only; changes to %s take effect at the next restart",
                         ", ".join(later))
        settings = old.model_copy(update={"security": security, "privacy": fresh.privacy})
        return settings, _policy_parts(settings, key=self.key, schema=self.schema, state=self.state)

    # -- progress -------------------------------------------------------------------------

    def _send_progress(self, event: ProgressEvent) -> None:
        if self.progress.admit(event, now=time.monotonic()):
            with contextlib.suppress(asyncio.QueueFull):
                self._progress_queue.put_nowait(event)

    async def _progress(self, hub: HubClient) -> None:
        while True:
            event = await self._progress_queue.get()
            try:
                # Counted for the audit export before it may leave; a task still being stored is counted too.
                await asyncio.to_thread(self.state.add_egress, event.task_id, "progress", len(canonical_json(event)))
                await hub.progress(event)
            except _PROGRESS_ERRORS as exc:
                _log.debug("progress event dropped: %s", exc)

    # -- outbox ---------------------------------------------------------------------------

    async def _outbox(self, hub: HubClient) -> None:
        backoff = Backoff(self.settings.hub.backoff_initial_s, self.settings.hub.backoff_cap_s)
        while True:
            self._outbox_wake.clear()
            entries = await asyncio.to_thread(self.state.pending_results)
            self.metrics.set_outbox_depth(len(entries))
            if not entries:
                await _wait_any(self._outbox_wake, self._stop, timeout_s=IDLE_RECHECK_S)
                continue
            failed = False
            for entry in entries:
                try:
                    await self._deliver(hub, entry)
                except HubRejected as exc:
                    # This one result is refused for now (e.g. a hub that lost the task); the others still go.
                    failed = True
                    _log.warning("result upload refused (%s); it stays in the outbox", exc)
                except RETRYABLE as exc:
                    failed = True
                    _log.info("result upload failed (%s); retrying", exc)
                    break
            if failed:
                await backoff.wait(self._stop)
            else:
                backoff.reset()

    async def _deliver(self, hub: HubClient, entry: OutboxEntry) -> None:
        await asyncio.to_thread(self.state.note_attempt, entry.task_id, now=_now())
        raw = entry.result_json.encode()
        result = ResultPayload.model_validate(parse_envelope(raw).payload)
        if entry.blob_path is not None and result.blob is not None:
            await hub.put_blob(entry.blob_path, result.blob.sha256)
        try:
            await hub.upload_result(raw)
        except HubRejected as exc:
            if exc.status != 409:
                raise
            # The hub holds a different result for this task; ours can never replace it.
            _log.error("hub holds a different result for task %s; dropping ours", entry.task_id)
        removed = await asyncio.to_thread(self.state.mark_delivered, entry.task_id, now=_now())
        if removed is not None and removed.blob_path is not None:
            removed.blob_path.unlink(missing_ok=True)
        _log.info("result delivered", extra={"status": result.status})


@dataclass
class _LinkState:
    """The hub link as the agent's readiness, metrics and inbox see it (``hublink.LinkListener``)."""

    hub: HubClient
    pod: str
    readiness: Readiness
    metrics: AgentMetrics
    notifier: Notifier
    inbox: _Inbox

    def admitted(self) -> None:
        if not self.readiness.registered:
            _log.info("registered with the hub at %s as %s", self.hub.base, self.pod)
            self.notifier.ready(f"registered as {self.pod}")
            self.readiness.registered = True

    def connected(self, base: str) -> None:
        self.readiness.hub_connected = True
        self.metrics.heartbeat()

    def down(self, exc: BaseException) -> None:
        self.readiness.hub_connected = False
        self.metrics.reconnected()

    async def push(self, push: HubPush) -> None:
        if isinstance(push, HeartbeatAck):
            self.metrics.heartbeat()
        else:
            await self.inbox.put(push)


class _Inbox:
    """Delivered tasks waiting for intake, bounded by count and by the size of their envelopes together.

    ``put`` waits while the envelopes queued (and being admitted) pass ``max_chars``, except into an
    empty inbox: one delivery always fits, the reply cap bounds it. ``done`` frees a delivery's room.
    """

    def __init__(self, *, max_items: int, max_chars: int) -> None:
        self._queue: asyncio.Queue[TaskDelivery] = asyncio.Queue(max_items)
        self._max_chars = max_chars
        self._chars = 0
        self._freed = asyncio.Event()

    async def put(self, delivery: TaskDelivery) -> None:
        size = len(delivery.envelope)
        while self._chars and self._chars + size > self._max_chars:
            self._freed.clear()
            await self._freed.wait()
        self._chars += size
        await self._queue.put(delivery)

    async def get(self) -> TaskDelivery:
        return await self._queue.get()

    def done(self, delivery: TaskDelivery) -> None:
        self._chars -= len(delivery.envelope)
        self._freed.set()


class _HubFetcher:
    """The pipeline's view of the hub: model source by reference, blobs by sha256, secure-round messages.

    A model or blob the hub cannot or will not hand over fails its task with a fixed code; why (the
    transport's account, logged here) stays in the local log. Round traffic failures are the secure
    round's to judge.
    """

    def __init__(self, hub: HubClient) -> None:
        self._hub = hub

    async def model_source(self, name: str, version: str) -> str:
        try:
            return (await self._hub.model_source(name, version)).source
        except HubError as exc:
            _log.warning("model source not fetched: %s", exc)
            raise TaskFailed(FailureCode.SOURCE_MISSING.value, f"model {name}@{version}: {exc}") from exc

    async def blob(self, sha256: str, dest: Path, *, size_bytes: int) -> None:
        try:
            await self._hub.fetch_blob(sha256, dest, size_bytes=size_bytes)
        except HubError as exc:
            _log.warning("pinned weights not fetched: %s", exc)
            raise TaskFailed(FailureCode.WEIGHTS_UNAVAILABLE.value, str(exc)) from exc

    async def round_post(self, path: str, body: bytes) -> None:
        await self._hub.round_post(path, body)

    async def round_get(self, path: str, *, after: int, wait_s: float) -> RoundMessages:
        return await self._hub.round_get(path, after=after, wait_s=wait_s)

    async def put_blob(self, path: Path, sha256: str) -> None:
        await self._hub.put_blob(path, sha256)


def _where(exc: BaseException) -> str:
    """An exception's type and the file:line it was raised at, without its text (which may quote the hub
    or a model)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"


async def _wait_any(*events: asyncio.Event, timeout_s: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _install_signals(stop: asyncio.Event, reload: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Second signal: the operator wants out now; the state DB is consistent at every commit.
            os._exit(128 + signum)
        _log.info("signal %s: stopping gracefully (send again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    def on_reload() -> None:
        _log.info("signal SIGHUP: reloading the policy from pod.toml")
        reload.set()

    loop.add_signal_handler(signal.SIGHUP, on_reload)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    return remove


async def run_agent(
    settings: PodSettings, *, stop: asyncio.Event | None = None, config_path: Path | None = None
) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stop``); returns normally after a graceful stop.
    SIGHUP re-reads the policy from ``config_path`` (the file ``settings`` came from)."""
    stop = stop if stop is not None else asyncio.Event()
    reload = asyncio.Event()
    remove_signals = _install_signals(stop, reload)
    try:
        agent = await Agent.open(settings, config_path=config_path)
        try:
            await agent.run(stop, reload=reload)
        finally:
            agent.close()
    finally:
        remove_signals()


__all__ = ["Agent", "run_agent", "sandbox_level_in_force"]
