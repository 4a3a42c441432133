"""The agent's hub transport: TLS choices and the plain-http rule."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest

from pod_agent.agent.hubclient import hub_ssl
from pod_agent.config import load_settings
from pod_agent.config.settings import HubSection
from pod_agent.errors import ConfigError


def test_plain_http_to_loopback_is_allowed() -> None:
    assert hub_ssl(HubSection(url="http://127.0.0.1:8700")) is False
    assert hub_ssl(HubSection(url="http://localhost:8700")) is False
    assert hub_ssl(HubSection(url="http://[::1]:8700")) is False


def test_plain_http_to_a_remote_hub_is_refused_without_the_unsafe_setting() -> None:
    with pytest.raises(ConfigError, match="hub.unsafe_allow_http = true"):
        hub_ssl(HubSection(url="http://192.0.2.1:8700"))


def test_unsafe_allow_http_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert hub_ssl(HubSection(url="http://192.0.2.1:8700", unsafe_allow_http=True)) is False
    assert "unsafe" in caplog.text


def test_pinned_certificate_wins_over_ca_bundle() -> None:
    chosen = hub_ssl(HubSection(url="https://hub.example:8700", pinned_cert_sha256="ab" * 32))
    assert isinstance(chosen, aiohttp.Fingerprint)


def test_bad_pin_and_missing_ca_bundle_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pinned_cert_sha256"):
        hub_ssl(HubSection(url="https://hub.example", pinned_cert_sha256="xyz"))
    with pytest.raises(ConfigError, match="ca_bundle"):
        hub_ssl(HubSection(url="https://hub.example", ca_bundle=tmp_path / "missing.pem"))


def test_https_without_options_uses_system_trust() -> None:
    chosen = hub_ssl(HubSection(url="https://hub.example"))
    assert isinstance(chosen, ssl.SSLContext) and chosen.verify_mode == ssl.CERT_REQUIRED


def test_other_schemes_are_refused() -> None:
    with pytest.raises(ConfigError, match="https://"):
        hub_ssl(HubSection(url="ftp://hub.example"))


def test_an_enrolment_token_of_another_shape_is_a_config_error_that_does_not_echo_it(tmp_path: Path) -> None:
    config = tmp_path / "pod.toml"
    config.write_text('[pod]\nname = "p"\n[datasource]\npath = "t.csv"\n[hub]\nenrolment_token = "secret but short"\n')
    with pytest.raises(ConfigError, match="hub.enrolment_token: is not an enrolment token: paste the 32") as caught:
        load_settings(config)
    assert "secret" not in str(caught.value)
    assert "s3cret" not in repr(HubSection(enrolment_token="s3cret" * 8))


def test_a_fallback_url_is_held_to_the_same_transport_rules_as_the_main_one() -> None:
    with pytest.raises(ConfigError, match="hub.fallback_urls entry http://192.0.2.1:8700 is plain http"):
        hub_ssl(HubSection(url="http://127.0.0.1:8700", fallback_urls=["http://192.0.2.1:8700"]))


async def test_a_pod_moves_to_the_next_hub_url_when_its_hub_is_unavailable(tmp_path: Path) -> None:
    """Two URLs of one hub, the first one dead: the failed call moves the client, the retry reaches the hub."""
    import socket

    from pod_agent.agent import HubClient
    from pod_agent.errors import HubUnavailable
    from pod_agent.hub import SqliteStorage, create_app, listening
    from pod_agent.protocol import IdentityKey

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed when the block ends: nothing listens
    storage = SqliteStorage(":memory:")
    async with listening(create_app(storage, blob_dir=tmp_path / "blobs"), port=0) as live:
        section = HubSection(url=dead, fallback_urls=[live], request_timeout_s=5)
        async with HubClient(section, IdentityKey.generate()) as client:
            with pytest.raises(HubUnavailable, match="127.0.0.1"):
                await client.health_seconds()
            assert client.base == live
            assert await client.health_seconds() > 0
    storage.close()


NO_SUCH_TASK = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize("task_id", [NO_SUCH_TASK, "0123abcd-0123-4567-89ab-0123456789ab"])
def test_socket_frames_are_the_canonical_json_of_their_messages(task_id: str) -> None:
    # Written out rather than through the general encoder: the bytes must stay those of canonical_json.
    from pod_agent.agent.hubclient import pod_frame
    from pod_agent.protocol import PodAck, PodHeartbeat, PodPromote, canonical_json

    for message in (PodAck(task_id=task_id), PodHeartbeat(), PodPromote()):
        assert pod_frame(message).encode() == canonical_json(message)


async def test_acks_go_on_the_open_task_socket_and_by_signed_request_once_it_is_closed(tmp_path: Path) -> None:
    """On the socket an ack is the pod's word about a task pushed there (the hub ignores one about no such
    task, silently); closed, the signed request is back, whose 404 names the task."""
    from pod_agent.agent import HubClient
    from pod_agent.errors import HubRejected
    from pod_agent.hub import SqliteStorage, create_app, listening
    from pod_agent.modeller import ModellerClient, build_task
    from pod_agent.protocol import CohortEntry, IdentityKey, PodRegistration, TaskDelivery

    storage = SqliteStorage(str(tmp_path / "hub.sqlite"))
    pod, modeller = IdentityKey.generate(), IdentityKey.generate()
    cohort = [CohortEntry(pod="pod-a", schema_hash="a" * 64, key_id=pod.key_id)]
    async with (
        listening(create_app(storage, blob_dir=tmp_path / "blobs"), port=0) as url,
        HubClient(HubSection(url=url), pod) as client,
        ModellerClient(url, modeller) as modelling,
    ):
        await client.register(PodRegistration(
            name="pod-a", public_key=pod.public.to_b64(), schema_public={}, schema_hash="a" * 64, row_count=10,
            sandbox_level="none", heartbeat_s=5,
        ))
        await modelling.register("m")
        for _ in range(2):
            task = build_task(modeller_id=modeller.key_id, cohort=cohort, kind="schema-stats")
            await modelling.submit_task(task, cohort)
        async with await client.task_stream(heartbeat_s=5) as stream:
            first, second = [await stream.receive(timeout_s=5) for _ in range(2)]
            assert isinstance(first, TaskDelivery) and isinstance(second, TaskDelivery)
            await client.ack(NO_SUCH_TASK)  # on the socket: no answer to wait for
            await client.ack(first.task_id)
            for _ in range(250):  # the hub writes socket acks in the background
                if len(storage.pending_tasks("pod-a")) == 1:
                    break
                await asyncio.sleep(0.02)
        assert [t.task_id for t in storage.pending_tasks("pod-a")] == [second.task_id]
        with pytest.raises(HubRejected, match=f"no task {NO_SUCH_TASK} for pod 'pod-a'"):
            await client.ack(NO_SUCH_TASK)
        await client.ack(second.task_id)
        assert storage.pending_tasks("pod-a") == []
    storage.close()
