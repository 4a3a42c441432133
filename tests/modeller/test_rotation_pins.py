"""A modeller that pinned a pod's key follows the pod's key rotation only through a statement the pinned key
signed, within its overlap: forged, foreign-signed and expired statements, and a key swapped without one, get
no result through. The hub here is real; what it lists is set in its storage, as an honest or lying hub would."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from pod_agent.errors import ModellerError
from pod_agent.hub.storage import HubTaskRecord
from pod_agent.modeller import ModellerClient
from pod_agent.protocol import Envelope, IdentityKey, KeyRotation, envelope_bytes, sign_envelope
from pod_agent.protocol.messages import ResultPayload
from pod_agent.protocol.rotation import rotation_statement

HOUR_S = 3600


def _statement(*, old: IdentityKey, new: IdentityKey, issued_ago_s: int, overlap_s: int) -> Envelope:
    return rotation_statement(pod="clinic", old=old, new=new.public, now=int(time.time()) - issued_ago_s,
                              overlap_s=overlap_s)


def _forged(old: IdentityKey, new: IdentityKey) -> Envelope:
    """The statement the pinned key would sign, signed instead by the new key under the pinned key's id."""
    now = int(time.time())
    statement = KeyRotation(pod="clinic", old_key=old.public.to_b64(), new_key=new.public.to_b64(), issued_at=now,
                            overlap_until=now + HOUR_S)
    return sign_envelope(statement, new).model_copy(update={"signer": old.key_id})


@asynccontextmanager
async def _clinic_rekeyed(
    local_hub: Any, list_pod: Callable[..., IdentityKey], *, pinned: IdentityKey,
    rotations: Callable[[IdentityKey], list[Envelope]],
) -> AsyncIterator[tuple[ModellerClient, str, IdentityKey]]:
    """(client, task id, new key): the hub lists 'clinic' under a new key (with ``rotations(new)``), and holds
    a result of the task signed with that key; the client pinned ``pinned``."""
    storage = local_hub.storage
    new = list_pod(storage, "clinic")
    for statement in rotations(new):
        storage.add_pod_rotation("clinic", envelope_bytes(statement), now=1)
    async with ModellerClient(local_hub.url, IdentityKey.generate(), pod_keys={"clinic": pinned.public}) as client:
        await client.register("m")
        task_id = str(uuid.uuid4())
        storage.add_task(HubTaskRecord(task_id=task_id, modeller_id=client.key.key_id, envelope=b"{}",
                                       pods=("clinic",), created_at=1))
        result = ResultPayload(task_id=task_id, pod="clinic", kind="evaluate", status="done", produced_at=1)
        storage.put_result(task_id, "clinic", envelope_bytes(sign_envelope(result, new)), status="done", now=1)
        yield client, task_id, new


async def test_a_result_under_the_new_key_verifies_during_the_overlap_of_a_statement_the_pin_signed(
    local_hub: Any, list_pod: Callable[..., IdentityKey],
) -> None:
    old = IdentityKey.generate()

    def rotated(new: IdentityKey) -> list[Envelope]:
        return [_statement(old=old, new=new, issued_ago_s=60, overlap_s=HOUR_S)]

    async with _clinic_rekeyed(local_hub, list_pod, pinned=old, rotations=rotated) as (client, task_id, new):
        (result,) = await client.results(task_id)
        # The new key signs the pod's round keys from now on: the cohort names it.
        assert (await client.identity_keys(["clinic"]))["clinic"].key_id == new.key_id
    assert result.pod == "clinic" and result.pinned


@pytest.mark.parametrize(
    ("rotations", "refused"),
    [
        pytest.param(lambda old, new: [], "fails verification", id="key-swapped-without-a-statement"),
        pytest.param(lambda old, new: [_forged(old, new)], "fails verification", id="forged-statement"),
        pytest.param(
            lambda old, new: [_statement(old=IdentityKey.generate(), new=new, issued_ago_s=60, overlap_s=HOUR_S)],
            "fails verification", id="statement-signed-by-another-key",
        ),
        pytest.param(
            lambda old, new: [_statement(old=old, new=new, issued_ago_s=2 * HOUR_S, overlap_s=HOUR_S)],
            r"rotated its pinned key to .*the overlap for the old key ended .*pin it", id="expired-statement",
        ),
    ],
)
async def test_a_new_key_without_a_valid_statement_from_the_pin_gets_no_result_through(
    local_hub: Any, list_pod: Callable[..., IdentityKey], rotations: Callable[..., list[Envelope]], refused: str,
) -> None:
    old = IdentityKey.generate()
    async with _clinic_rekeyed(local_hub, list_pod, pinned=old, rotations=lambda new: rotations(old, new)) as (
        client, task_id, _
    ):
        with pytest.raises(ModellerError, match=refused):
            await client.results(task_id)
