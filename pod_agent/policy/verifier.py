"""The pod's own decision on a task: verify the envelope, then apply the policy in pod.toml.

Owns the acceptance checks and their order. Checks run cheapest first and each
refusal carries one ``RefusalCode``:

 1. size        raw bytes over security.max_task_bytes            payload_too_large
 2. parse       strict JSON envelope                                malformed
 3. signer      envelope signer among security.modellers           unknown_signer
 4. signature   Ed25519 over canonical_json(payload)               bad_signature
                the signing key past its not_after                  key_expired
    (then the signed payload must be a valid task whose modeller_id is the signer,
    with a model and data selection for train/evaluate/predict,
    and a declarative model must carry its spec inline)           malformed
 5. expiry      lifetime over max_task_lifetime_s                  lifetime_exceeded
                issued_at > now + clock_skew_s                     not_yet_valid
                now > expires_at + clock_skew_s                    expired
 6. nonce       task_id or nonce seen before                       replay
 7. role        the delivery's cohort proof names this pod          not_targeted
                and leads to the signed cohort root and size       bad_cohort_proof
                predict needs allow_predict                        predict_not_permitted
                kind among the modeller's kinds (and evaluate       kind_not_permitted
                for a train task that evaluates first)
                general: model allow-listed by name+sha256          role_not_permitted
                (allowed_models, or approved in the state for one of the
                modeller's keys; with security.review it is held instead)
                epochs/steps within the modeller's maximum          limits_exceeded
                proximal_mu within the modeller's max_proximal_mu   limits_exceeded
 8. floor       the owner's privacy floor for this modeller (``floor.py``):
                train without secure aggregation when required      secure_aggregation_required
                train without pinned starting weights               weights_not_pinned
                train batch_size under min_batch_size               batch_too_small
                train updates in bfloat16/float16 (wire_dtype)      limits_exceeded
                without privacy.allow_half_precision
                a used split estimated under min_rows               split_too_small
                epochs x ceil(train rows / batch) over the maximum  too_many_steps
                clip bound or clip_norm above the owner's ceiling   clip_too_loose
                a signed cohort size under min_pods                 too_few_pods
                (each member is authenticated as a pinned peer, by its own cohort proof, when the
                secure round's roster forwards its advert: ``agent.secure_round``)
 9. source hash inline source / spec hashes to model.sha256        source_hash_mismatch
10. schema hash this pod's proven cohort entry pins this pod's     schema_mismatch
11. dp budget   for a modeller with a dp budget (``budget.py``):
                evaluate/predict/schema-stats not in
                privacy.dp.unsafe_unaccounted_kinds                 unaccounted_release
                the modeller's or the dataset's ledger composed
                with this task's release passes its epsilon         privacy_budget_exhausted
                (checked and reserved in the verdict's own transaction)

12. review      with security.review, a model not approved for the
                modeller (``review.py``) is held: stored pending_review, not
                accepted, until the owner decides (rejected: review_rejected;
                its expiry passed while waiting: expired)

A modeller may sign with several keys (``public_key`` and ``keys``, each with an
optional ``not_after``); a task is the modeller's under any of them.

Recording: every task whose signature verified and which is within its validity
window is recorded with its verdict (accepted, or refused with its code) in the
same transaction that marks its task_id and nonce seen (``NonceStore.record_verdict``).
So a replay of an authentic task is always caught, whether it was accepted or
refused, and a task refused by policy cannot run later because the pod's config
changed. Nothing is recorded before the signature verifies (a forger cannot burn a
modeller's task ids), nor for a not-yet-valid task (it may be delivered again once
valid), nor for an expired or malformed one (refused the same way forever). Nonces
are kept until expires_at + clock_skew_s; after that a replay is refused as expired.

``schema-stats`` tasks (aggregate facts only, like evaluate) are permitted to a
modeller whose kinds include ``evaluate``. A ``train`` task must bound its run with
epochs or steps. An empty policy (no modellers) refuses everything as unknown_signer.
Models given by ``hub_ref`` are fetched later; the daemon checks the fetched text
with ``check_fetched_source`` before using it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pydantic import ValidationError

from pod_agent.config import ModellerKey, ModellerPolicy, PrivacySection, SecuritySection
from pod_agent.errors import ConfigError, ProtocolError, TaskRefused
from pod_agent.policy.budget import PrivacyBudgets
from pod_agent.policy.codes import RefusalCode
from pod_agent.policy.floor import PrivacyFloor, effective_steps, estimated_rows, used_splits
from pod_agent.policy.peers import configured_key
from pod_agent.policy.review import review_hold
from pod_agent.protocol import (
    CohortEntry,
    CohortProof,
    Envelope,
    ModelRef,
    PublicKey,
    SecAggParams,
    TaskPayload,
    check_inclusion,
    envelope_bytes,
    first_error,
    parse_envelope,
    source_sha256,
    spec_sha256,
    verify_envelope,
)
from pod_agent.state import AlreadySeen, NonceStore, Reservation, ReviewHold, Verdict


@dataclass(frozen=True)
class VerifiedTask:
    """A task the pod accepted (or holds for the owner's review): the signed payload, its signer's policy entry."""

    payload: TaskPayload
    modeller: ModellerPolicy
    envelope: Envelope
    floor: PrivacyFloor
    pending_review: bool = False


@dataclass(frozen=True)
class _Signer:
    """One key a modeller signs with, and the modeller's entry."""

    modeller: ModellerPolicy
    key: PublicKey
    not_after_s: int | None  # Unix s
    all_key_ids: tuple[str, ...]  # every key of the same modeller


def modeller_keys(modellers: Sequence[ModellerPolicy]) -> dict[str, ModellerPolicy]:
    """Each signing key id of each modeller (``public_key`` and ``keys``) -> its entry."""
    return {
        PublicKey.from_b64(k.public_key).key_id: entry for entry in modellers for k in entry.signing_keys()
    }


def _signer_for(entry: ModellerPolicy, signing: ModellerKey, *, where: str) -> _Signer:
    key = configured_key(signing.public_key, where=where, fix="paste the key that `pod-agent keys generate` printed")
    not_after = None if signing.not_after is None else int(signing.not_after.timestamp())
    return _Signer(modeller=entry, key=key, not_after_s=not_after, all_key_ids=(key.key_id,))


def _refuse(code: RefusalCode, detail: str, task_id: str | None) -> TaskRefused:
    """``task_id`` only once the signature verified: an unauthenticated id must not steer the caller."""
    return TaskRefused(code.value, detail, task_id=task_id)


def check_fetched_source(model: ModelRef, source: str) -> None:
    """Refuse (source_hash_mismatch) model source fetched by hub_ref unless it hashes to model.sha256."""
    if source_sha256(source) != model.sha256:
        raise TaskRefused(
            RefusalCode.SOURCE_HASH_MISMATCH.value,
            f"source fetched for model {model.name!r} does not hash to the signed sha256 {model.sha256[:16]}",
        )


class TaskVerifier:
    """Decides whether this pod runs a raw task message; see the module docstring for the checks."""

    def __init__(
        self,
        *,
        security: SecuritySection,
        privacy: PrivacySection,
        pod_name: str,
        schema_hash: str,
        row_count: int,
        nonces: NonceStore,
    ) -> None:
        self._security = security
        self._privacy = privacy
        self._pod_name = pod_name
        self._schema_hash = schema_hash
        self._row_count = row_count
        self._nonces = nonces
        self._budgets = PrivacyBudgets(privacy, dataset=schema_hash, row_count=row_count)
        self._signers: dict[str, _Signer] = {}
        for index, entry in enumerate(security.modellers):
            signers = [
                _signer_for(entry, signing, where=f"security.modellers[{index}]{part} ({entry.name!r})")
                for signing, part in zip(
                    entry.signing_keys(), [".public_key", *(f".keys[{i}]" for i in range(len(entry.keys)))], strict=True
                )
            ]
            ids = tuple(s.key.key_id for s in signers)
            for signer in signers:
                if signer.key.key_id in self._signers:
                    other = self._signers[signer.key.key_id].modeller.name
                    raise ConfigError(
                        f"security.modellers[{index}] ({entry.name!r}) has the same public key as {other!r} "
                        "(public_key or keys): list each key once"
                    )
                self._signers[signer.key.key_id] = replace(signer, all_key_ids=ids)
            self._budgets.check_modeller(entry)
        self._allowed_models = frozenset((m.name, m.sha256) for m in security.allowed_models)

    def verify(self, raw: bytes, *, proof: CohortProof, now: int) -> VerifiedTask:
        """Return the accepted task, or raise TaskRefused with the first failing check's code.

        ``proof`` is this pod's entry of the task's cohort with its inclusion path, as the hub delivered it
        beside the envelope: checked against the signed root (step 7), never trusted for itself.

        A StateError from the nonce store propagates: nothing was admitted, and the same
        message may be verified again once the state is writable.
        """
        if len(raw) > self._security.max_task_bytes:
            raise _refuse(
                RefusalCode.PAYLOAD_TOO_LARGE,
                f"task message is {len(raw)} bytes, over security.max_task_bytes = {self._security.max_task_bytes}",
                None,
            )
        try:
            env = parse_envelope(raw)
        except ProtocolError as exc:
            raise _refuse(RefusalCode.MALFORMED, str(exc), None) from exc
        signer = self._signers.get(env.signer)
        if signer is None:
            raise _refuse(RefusalCode.UNKNOWN_SIGNER, f"signer {env.signer[:16]} is not in security.modellers", None)
        modeller = signer.modeller
        try:
            body = verify_envelope(env, signer.key)
        except ProtocolError as exc:
            raise _refuse(RefusalCode.BAD_SIGNATURE, f"{exc} (signer {modeller.name!r})", None) from exc
        if signer.not_after_s is not None and now > signer.not_after_s:
            raise _refuse(
                RefusalCode.KEY_EXPIRED,
                f"modeller {modeller.name!r} key {env.signer[:16]} expired {now - signer.not_after_s} s ago "
                "(its not_after): the modeller signs with its newer key",
                None,
            )
        try:
            payload = TaskPayload.model_validate_json(body)
        except ValidationError as exc:
            raise _refuse(
                RefusalCode.MALFORMED, f"signed task is invalid at {first_error(exc, root='payload')}", None
            ) from exc
        self._check_shape(payload, modeller, signer.key.key_id)
        self._check_times(payload, now)

        try:
            self._nonces.ensure_unseen(task_id=payload.task_id, nonce=payload.nonce)
        except AlreadySeen as exc:
            raise _refuse(RefusalCode.REPLAY, str(exc), payload.task_id) from exc

        verdict_json = envelope_bytes(env).decode("utf-8")
        floor = PrivacyFloor.for_modeller(self._privacy, modeller)
        try:
            self._check_role(payload, signer, proof)
            self._check_floor(payload, floor)
            self._check_source(payload)
            self._check_schema(payload, proof.entry)
            reservation = self._budgets.reservation(payload, modeller)
        except TaskRefused as refusal:
            self._record(payload, verdict_json, refusal.code, now)
            raise
        hold = review_hold(payload.model, security=self._security, modeller_keys=signer.all_key_ids,
                           approvals=self._nonces)
        self._record(payload, verdict_json, None, now, reservation, hold)
        return VerifiedTask(payload=payload, modeller=modeller, envelope=env, floor=floor,
                            pending_review=hold is not None)

    def _record(
        self, payload: TaskPayload, envelope_json: str, code: str | None, now: int,
        reservation: Reservation | None = None, hold: ReviewHold | None = None,
    ) -> None:
        verdict = Verdict(
            task_id=payload.task_id,
            nonce=payload.nonce,
            modeller_id=payload.modeller_id,
            kind=payload.kind,
            envelope_json=envelope_json,
            accepted=code is None,
            reason=code,
            keep_until=payload.expires_at + self._security.clock_skew_s,
            now=now,
            review=hold,
        )
        try:
            self._nonces.record_verdict(verdict, reservation)
        except AlreadySeen as exc:  # the same task verified concurrently
            raise _refuse(RefusalCode.REPLAY, str(exc), payload.task_id) from exc
        except TaskRefused as exc:  # the budget check, run in the verdict's transaction; recorded refused
            raise _refuse(RefusalCode(exc.code), exc.detail, payload.task_id) from exc

    @staticmethod
    def _check_shape(payload: TaskPayload, modeller: ModellerPolicy, signer: str) -> None:
        if payload.modeller_id != signer:
            raise _refuse(
                RefusalCode.MALFORMED,
                f"payload.modeller_id {payload.modeller_id[:16]} is not its signer {modeller.name!r}",
                payload.task_id,
            )
        if payload.kind != "schema-stats" and (payload.model is None or payload.data is None):
            raise _refuse(
                RefusalCode.MALFORMED, f"a {payload.kind} task needs a model and a data selection", payload.task_id
            )
        if payload.model is not None and payload.model.style == "declarative" and payload.model.hub_ref is not None:
            # The hub serves model source, never a spec: a declarative model by hub_ref would fetch Python
            # (code a general modeller may not run) and then fail in the worker, which reads only a spec.
            raise _refuse(
                RefusalCode.MALFORMED,
                f"declarative model {payload.model.name!r} names hub_ref {payload.model.hub_ref[:64]!r}: a declarative "
                "model carries its spec inline (the hub holds only model source)",
                payload.task_id,
            )

    def _check_times(self, payload: TaskPayload, now: int) -> None:
        skew = self._security.clock_skew_s
        lifetime = payload.expires_at - payload.issued_at
        if lifetime <= 0:
            raise _refuse(RefusalCode.MALFORMED, f"expires_at is {-lifetime} s before issued_at", payload.task_id)
        if lifetime > self._security.max_task_lifetime_s:
            raise _refuse(
                RefusalCode.LIFETIME_EXCEEDED,
                f"task lives {lifetime} s, over security.max_task_lifetime_s = {self._security.max_task_lifetime_s}",
                payload.task_id,
            )
        if payload.issued_at > now + skew:
            raise _refuse(
                RefusalCode.NOT_YET_VALID,
                f"issued_at is {payload.issued_at - now} s in the future (allowed skew {skew} s)",
                payload.task_id,
            )
        if now > payload.expires_at + skew:
            raise _refuse(
                RefusalCode.EXPIRED,
                f"expired {now - payload.expires_at} s ago (allowed skew {skew} s)",
                payload.task_id,
            )

    def _check_role(self, payload: TaskPayload, signer: _Signer, proof: CohortProof) -> None:
        task_id, modeller = payload.task_id, signer.modeller
        if proof.entry.pod != self._pod_name:
            raise _refuse(
                RefusalCode.NOT_TARGETED,
                f"the task was delivered with the cohort entry of pod {proof.entry.pod[:64]!r}, not of "
                f"{self._pod_name!r}",
                task_id,
            )
        try:
            check_inclusion(payload.cohort, proof)
        except ProtocolError as exc:
            raise _refuse(RefusalCode.BAD_COHORT_PROOF, str(exc), task_id) from exc
        if payload.kind == "predict" and not modeller.allow_predict:
            raise _refuse(
                RefusalCode.PREDICT_NOT_PERMITTED, f"modeller {modeller.name!r} has allow_predict = false", task_id
            )
        needed = "evaluate" if payload.kind == "schema-stats" else payload.kind
        if needed not in modeller.kinds:
            raise _refuse(
                RefusalCode.KIND_NOT_PERMITTED,
                f"modeller {modeller.name!r} may run {list(modeller.kinds)}, not {payload.kind}",
                task_id,
            )
        if payload.evaluate_first and "evaluate" not in modeller.kinds:
            # Its test metrics are an evaluate task's release, carried by a train task.
            raise _refuse(
                RefusalCode.KIND_NOT_PERMITTED,
                f"modeller {modeller.name!r} may run {list(modeller.kinds)}, not evaluate (a train task that "
                "evaluates first)",
                task_id,
            )
        if payload.model is not None and modeller.role != "super":
            self._check_general_model(payload.model, signer, task_id)
        self._check_limits(payload, modeller)

    def _check_floor(self, payload: TaskPayload, floor: PrivacyFloor) -> None:
        """The owner's privacy floor, cheapest rule first (see the module docstring)."""
        task_id, hp = payload.task_id, payload.hyperparameters
        train = payload.kind == "train"
        if train and floor.require_secure_aggregation and payload.secagg is None:
            raise _refuse(
                RefusalCode.SECURE_AGGREGATION_REQUIRED,
                "this pod sends train results only under secure aggregation (privacy.require_secure_aggregation)",
                task_id,
            )
        if train and hp.wire_dtype != "float32" and not self._privacy.allow_half_precision:
            raise _refuse(
                RefusalCode.LIMITS_EXCEEDED,
                f"the task asks for {hp.wire_dtype} updates; this pod sends float32 only "
                "(privacy.allow_half_precision)",
                task_id,
            )
        if train and payload.weights is None:
            raise _refuse(
                RefusalCode.WEIGHTS_NOT_PINNED,
                "a train task must name the weights it starts from (weights sha256), so the result can be checked "
                "against them; the modeller SDK makes them from the model and the pod's registered schema",
                task_id,
            )
        if train and hp.batch_size < floor.min_batch_size:
            raise _refuse(
                RefusalCode.BATCH_TOO_SMALL,
                f"batch_size {hp.batch_size} is under min_batch_size {floor.min_batch_size}",
                task_id,
            )
        if payload.data is not None:
            rows = estimated_rows(self._row_count, payload.data.split)
            small = [name for name in used_splits(payload.kind, payload.data.split) if rows[name] < floor.min_rows]
            if small:
                raise _refuse(
                    RefusalCode.SPLIT_TOO_SMALL,
                    f"split {small[0]!r} would hold about {rows[small[0]]} rows, under min_rows {floor.min_rows}",
                    task_id,
                )
            steps = effective_steps(hp, rows["train"])
            if train and steps > floor.max_effective_steps:
                raise _refuse(
                    RefusalCode.TOO_MANY_STEPS,
                    f"the task would take about {steps} optimiser steps, over max_effective_steps "
                    f"{floor.max_effective_steps}",
                    task_id,
                )
        if payload.secagg is not None:
            self._check_cohort(payload.secagg, payload.cohort.size, floor, task_id)

    @staticmethod
    def _check_cohort(secagg: SecAggParams, size: int, floor: PrivacyFloor, task_id: str) -> None:
        """The clipping bounds and the signed cohort size: the modeller signs the size with the root, so a
        pod holding only its own entry still counts the whole cohort."""
        bound = secagg.prime_q / (2 * secagg.precision * secagg.num_workers)
        if bound > floor.max_clip_bound:
            raise _refuse(
                RefusalCode.CLIP_TOO_LOOSE,
                f"param_clipping bounds each value by {bound:.6g}, over max_clip_bound {floor.max_clip_bound}",
                task_id,
            )
        if floor.max_clip_norm is not None and (secagg.clip_norm is None or secagg.clip_norm > floor.max_clip_norm):
            raise _refuse(
                RefusalCode.CLIP_TOO_LOOSE,
                f"clip_norm {secagg.clip_norm} is not within max_clip_norm {floor.max_clip_norm}", task_id,
            )
        if size < floor.min_pods:
            raise _refuse(
                RefusalCode.TOO_FEW_PODS,
                f"secure aggregation over a signed cohort of {size} pods, under min_pods {floor.min_pods}",
                task_id,
            )
        if size > secagg.num_workers:
            raise _refuse(
                RefusalCode.CLIP_TOO_LOOSE,
                f"a signed cohort of {size} pods but param_clipping num_workers {secagg.num_workers}: "
                "the sum could wrap",
                task_id,
            )

    def _check_general_model(self, model: ModelRef, signer: _Signer, task_id: str) -> None:
        if model.style == "declarative" and self._security.allow_declarative_models:
            return
        if (model.name, model.sha256) in self._allowed_models or self._security.review:
            return  # under review, a model not yet approved is held for the owner (step 12), not refused
        if not self._nonces.is_approved(modeller_keys=signer.all_key_ids, name=model.name, sha256=model.sha256):
            raise _refuse(
                RefusalCode.ROLE_NOT_PERMITTED,
                f"general modeller {signer.modeller.name!r} may run only security.allowed_models and models "
                f"approved for it (`pod-agent review`); model {model.name!r} sha256 {model.sha256[:16]} is neither",
                task_id,
            )

    @staticmethod
    def _check_limits(payload: TaskPayload, modeller: ModellerPolicy) -> None:
        hp = payload.hyperparameters
        if payload.kind == "train" and hp.epochs is None and hp.steps is None:
            raise _refuse(
                RefusalCode.LIMITS_EXCEEDED,
                "a train task must give epochs or steps so its run is bounded",
                payload.task_id,
            )
        if hp.epochs is not None and hp.epochs > modeller.max_epochs:
            raise _refuse(
                RefusalCode.LIMITS_EXCEEDED,
                f"{hp.epochs} epochs, over {modeller.name!r}'s max_epochs = {modeller.max_epochs}",
                payload.task_id,
            )
        if hp.steps is not None and hp.steps > modeller.max_steps:
            raise _refuse(
                RefusalCode.LIMITS_EXCEEDED,
                f"{hp.steps} steps, over {modeller.name!r}'s max_steps = {modeller.max_steps}",
                payload.task_id,
            )
        mu = payload.proximal_mu
        if mu is not None and mu > modeller.max_proximal_mu:
            # Refused rather than clamped: a smaller mu would run another objective than the modeller planned
            # and the modeller could not tell; the refusal says which bound to ask the owner about.
            raise _refuse(
                RefusalCode.LIMITS_EXCEEDED,
                f"proximal_mu {mu:g}, over {modeller.name!r}'s max_proximal_mu = {modeller.max_proximal_mu:g}",
                payload.task_id,
            )

    @staticmethod
    def _check_source(payload: TaskPayload) -> None:
        model = payload.model
        if model is None or model.hub_ref is not None:
            return
        actual = source_sha256(model.source) if model.source is not None else spec_sha256(model.spec)
        if actual != model.sha256:
            raise _refuse(
                RefusalCode.SOURCE_HASH_MISMATCH,
                f"model {model.name!r} hashes to {actual[:16]}, not the signed {model.sha256[:16]}",
                payload.task_id,
            )

    def _check_schema(self, payload: TaskPayload, entry: CohortEntry) -> None:
        pinned = entry.schema_hash
        if pinned != self._schema_hash:
            raise _refuse(
                RefusalCode.SCHEMA_MISMATCH,
                f"task was built for schema {pinned[:16]}, this pod's is {self._schema_hash[:16]}",
                payload.task_id,
            )

