"""The modeller's client trusts pods' signatures, not the hub: forged or swapped results are rejected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from task_support import cohort_of, entries

from pod_agent.errors import ConfigError, ModellerError
from pod_agent.hub.storage import PodRecord
from pod_agent.modeller import ModellerClient, build_task, model_from_file
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope, source_sha256, spec_sha256
from pod_agent.protocol.messages import ResultPayload


def _pod(storage: Any, key: IdentityKey, name: str = "pod-a") -> None:
    now = int(time.time())
    storage.upsert_pod(PodRecord(
        name=name, key_id=key.key_id, public_key=key.public.to_b64(), schema={"columns": []},
        schema_hash="a" * 64, row_count=10, sandbox_level="strict", heartbeat_s=1.0, registered_at=now,
        last_seen=now,
    ))


def _result(key: IdentityKey, task_id: str, pod: str = "pod-a") -> bytes:
    payload = ResultPayload(task_id=task_id, pod=pod, kind="schema-stats", status="done", n_rows=10, produced_at=1)
    return envelope_bytes(sign_envelope(payload, key))


async def _submitted(local_hub: Any, client: ModellerClient) -> str:
    await client.register("m")
    task = build_task(modeller_id=client.key.key_id, cohort=entries(["pod-a"], "a" * 64), kind="schema-stats")
    return await client.submit_task(task, cohort_of(task))


async def test_genuine_result_verifies(local_hub: Any) -> None:
    pod_key = IdentityKey.generate()
    _pod(local_hub.storage, pod_key)
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        task_id = await _submitted(local_hub, client)
        local_hub.storage.put_result(task_id, "pod-a", _result(pod_key, task_id), status="done", now=1)
        (result,) = await client.results(task_id)
    assert result.pod == "pod-a" and result.payload.n_rows == 10


async def test_result_forged_by_the_hub_is_rejected(local_hub: Any) -> None:
    _pod(local_hub.storage, IdentityKey.generate())
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        task_id = await _submitted(local_hub, client)
        local_hub.storage.put_result(task_id, "pod-a", _result(IdentityKey.generate(), task_id), status="done", now=1)
        with pytest.raises(ModellerError, match="fails verification"):
            await client.results(task_id)


async def test_result_of_another_task_replayed_by_the_hub_is_rejected(local_hub: Any) -> None:
    pod_key = IdentityKey.generate()
    _pod(local_hub.storage, pod_key)
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        task_id = await _submitted(local_hub, client)
        other = "11111111-1111-4111-8111-111111111111"
        local_hub.storage.put_result(task_id, "pod-a", _result(pod_key, other), status="done", now=1)
        with pytest.raises(ModellerError, match=f"is for task {other}"):
            await client.results(task_id)


async def test_pinned_pod_keys_override_what_the_hub_lists(local_hub: Any) -> None:
    pod_key, pinned = IdentityKey.generate(), IdentityKey.generate()
    _pod(local_hub.storage, pod_key)
    async with ModellerClient(local_hub.url, IdentityKey.generate(), pod_keys={"pod-a": pinned.public}) as client:
        task_id = await _submitted(local_hub, client)
        local_hub.storage.put_result(task_id, "pod-a", _result(pod_key, task_id), status="done", now=1)
        with pytest.raises(ModellerError, match="fails verification"):
            await client.results(task_id)


async def test_waiting_for_a_silent_pod_times_out_naming_it(local_hub: Any) -> None:
    _pod(local_hub.storage, IdentityKey.generate())
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        task_id = await _submitted(local_hub, client)
        with pytest.raises(ModellerError, match=r"no answer from \['pod-a'\]"):
            await client.wait_results(task_id, ["pod-a"], timeout_s=0.3)


async def test_submitting_to_an_unknown_pod_names_it(local_hub: Any) -> None:
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        await client.register("m")
        task = build_task(modeller_id=client.key.key_id, cohort=entries(["nope"], "a" * 64), kind="schema-stats")
        with pytest.raises(ModellerError, match=r"404.*unknown pods \['nope'\]"):
            await client.submit_task(task, cohort_of(task))


def test_tasks_get_fresh_ids_nonces_and_a_bounded_lifetime() -> None:
    key = IdentityKey.generate()
    one = build_task(modeller_id=key.key_id, cohort=entries(["a"], "a" * 64), kind="schema-stats", now=1000)
    two = build_task(modeller_id=key.key_id, cohort=entries(["a"], "a" * 64), kind="schema-stats", now=1000)
    assert one.task_id != two.task_id and one.nonce != two.nonce
    assert (one.issued_at, one.expires_at) == (1000, 4600)


def test_training_task_needs_a_model_and_data() -> None:
    with pytest.raises(ModellerError, match="needs a model and a data selection"):
        build_task(modeller_id="a" * 64, cohort=entries(["a"], "a" * 64), kind="train")


def test_model_from_file_pins_source_and_spec(tmp_path: Path) -> None:
    source = tmp_path / "net.py"
    source.write_text("class Net: pass\n")
    ref = model_from_file(source, style="module", class_name="Net")
    assert ref.sha256 == source_sha256("class Net: pass\n") and ref.name == "net"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"layers": [{"type": "ReLU"}]}))
    declared = model_from_file(spec, style="declarative", class_name=None)
    assert declared.sha256 == spec_sha256({"layers": [{"type": "ReLU"}]})


def test_cli_reports_an_unsafe_hub_url_in_one_line(tmp_path: Path) -> None:
    key = tmp_path / "m.pem"
    IdentityKey.generate().save(key)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "pod-agent"),
            "modeller",
            "--hub",
            "http://192.0.2.1:8700",
            "--key",
            str(key),
            "pods",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2  # a ConfigError: the option, not the hub, is wrong
    assert done.stderr.strip().count("\n") == 0
    assert "plain http to a non-loopback host" in done.stderr and "Traceback" not in done.stderr


async def test_a_cohort_entry_names_each_pod_with_its_schema_hash_and_identity_key_and_no_round_key(
    local_hub: Any,
) -> None:
    key = IdentityKey.generate()
    _pod(local_hub.storage, key, "pod-a")
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        await client.register("m")
        (entry,) = await client.cohort(["pod-a"])
        # Round keys are fresh per task and round, advertised signed by each pod during the round.
        assert entry.model_dump() == {"pod": "pod-a", "schema_hash": "a" * 64, "key_id": key.key_id}
        (pinned,) = await client.cohort(["pod-a"], schema_hashes={"pod-a": "b" * 64})
        assert pinned.schema_hash == "b" * 64


async def test_with_pins_a_hub_that_swaps_a_pods_keys_gets_no_participant_or_result_through(local_hub: Any) -> None:
    real, hubs_own = IdentityKey.generate(), IdentityKey.generate()
    # The hub lists its own identity key for pod-a: a modeller that trusts the hub's registry would
    # name the hub's key in the cohort (the pods' own pins then refuse the task: unknown_peer).
    _pod(local_hub.storage, hubs_own, "pod-a")
    _pod(local_hub.storage, IdentityKey.generate(), "pod-b")
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as trusting:
        await trusting.register("m")
        assert (await trusting.cohort(["pod-a"]))[0].key_id == hubs_own.key_id
    async with ModellerClient(local_hub.url, IdentityKey.generate(), pod_keys={"pod-a": real.public}) as client:
        await client.register("m")
        assert (await client.cohort(["pod-a"]))[0].key_id == real.key_id
        with pytest.raises(ModellerError, match=r"pods \['pod-b'\]: their identity keys are not pinned"):
            await client.cohort(["pod-b"])
        task_id = await _submitted(local_hub, client)
        local_hub.storage.put_result(task_id, "pod-a", _result(hubs_own, task_id), status="done", now=1)
        with pytest.raises(ModellerError, match="fails verification"):
            await client.results(task_id)


async def test_weights_upload_gives_the_reference_a_task_pins(local_hub: Any, tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x08" + b"\x00" * 7 + b"{}      ")
    async with ModellerClient(local_hub.url, IdentityKey.generate()) as client:
        await client.register("m")
        ref = await client.upload_weights(path)
    assert ref.sha256 == ref.blob_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ref.size_bytes == 16


@contextlib.asynccontextmanager
async def _dying_hub(reply: bytes = b"") -> AsyncIterator[str]:
    """A loopback hub process that reads each request's head and dies without answering (``reply`` empty), or
    answers ``reply`` and hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _refusing_url() -> str:
    """A loopback URL where no process listens (the hub process there was killed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_request_a_dead_hub_process_cannot_answer_goes_to_the_fallback_and_stays_there(
    local_hub: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pod_key = IdentityKey.generate()
    _pod(local_hub.storage, pod_key)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not really safetensors, but a blob all the same")
    refusing = _refusing_url()
    async with _dying_hub() as dying, ModellerClient(
        dying, IdentityKey.generate(), fallback_urls=[refusing, local_hub.url]
    ) as client:
        task_id = await _submitted(local_hub, client)  # the register died mid-request, then was refused
        assert client.hub_url == local_hub.url
        ref = await client.upload_blob(weights)  # a streamed upload goes to the live process too
        local_hub.storage.put_result(task_id, "pod-a", _result(pod_key, task_id), status="done", now=1)
        (result,) = await client.results(task_id)
    assert result.pod == "pod-a" and ref.size_bytes == weights.stat().st_size
    assert [r.getMessage().split(": ")[0] + " -> " + r.getMessage().rsplit("trying ")[1] for r in caplog.records] == [
        f"hub {dying} unreachable for POST /v1/modellers/register -> {refusing} next",
        f"hub {refusing} unreachable for POST /v1/modellers/register -> {local_hub.url} next",
    ]


async def test_when_no_hub_process_answers_the_error_names_the_last_one_tried() -> None:
    dead = [_refusing_url(), _refusing_url()]
    async with ModellerClient(dead[0], IdentityKey.generate(), fallback_urls=[dead[1]]) as client:
        with pytest.raises(ModellerError, match=f"hub {dead[1]} unreachable for GET /v1/pods"):
            await client.pods()


async def test_a_hub_answering_nonsense_is_not_retried_on_the_fallback(local_hub: Any) -> None:
    nonsense = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!"
    async with _dying_hub(nonsense) as lying, ModellerClient(
        lying, IdentityKey.generate(), fallback_urls=[local_hub.url]
    ) as client:
        with pytest.raises(ModellerError, match="not JSON|JSON"):
            await client.pods()
        assert client.hub_url == lying


def test_a_fallback_hub_url_is_held_to_the_same_transport_rules() -> None:
    with pytest.raises(ConfigError, match=r"fallback hub URL \(--fallback-hub\) http://192.0.2.1:8700 is plain http"):
        ModellerClient("http://127.0.0.1:8700", IdentityKey.generate(), fallback_urls=["http://192.0.2.1:8700"])
