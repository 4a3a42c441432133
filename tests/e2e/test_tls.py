"""The loop over TLS with a certificate the test makes: the agent trusts a CA bundle, the modeller pins."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from e2e_support import Cluster, wait_for  # type: ignore[import-not-found]

from pod_agent.errors import ConfigError, ModellerError
from pod_agent.modeller import ModellerClient

pytestmark = pytest.mark.slow



def test_schema_stats_over_tls_with_ca_bundle_and_pinned_certificate(
    start_cluster: Callable[..., Cluster], small_csv: Path, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_path = tmp_path / "hub.pem", tmp_path / "hub.key", tmp_path / "ca.pem"
    server.private_key_pem.write_to_path(key)
    server.cert_chain_pems[0].write_to_path(cert)
    ca.cert_pem.write_to_path(ca_path)
    cluster = start_cluster(cert=cert, key=key)
    assert cluster.hub.url.startswith("https://127.0.0.1:")

    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    cluster.modeller.extra = ["--pin-sha256", hashlib.sha256(der).hexdigest()]
    cluster.modeller.cli("register", "--name", "tester")
    agent = cluster.add_pod("tls-pod", small_csv, hub_extra=f'ca_bundle = "{ca_path}"')
    wait_for(lambda: cluster.online("tls-pod"), what="pod registered over TLS")
    task_id = cluster.modeller.cli("submit", "--pods", "tls-pod", "--kind", "schema-stats").stdout.strip()
    shown = cluster.modeller.cli("results", task_id, "--out", str(tmp_path / "out"), "--wait", "30").stdout
    assert shown.splitlines()[1].split()[:4] == ["tls-pod", "done", "-", "unpinned"]
    assert agent.terminate() == 0


async def test_modeller_without_the_ca_or_with_a_wrong_pin_refuses_the_hub(
    start_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "hub.pem", tmp_path / "hub.key"
    server.private_key_pem.write_to_path(key)
    server.cert_chain_pems[0].write_to_path(cert)
    cluster = start_cluster(cert=cert, key=key)
    async with ModellerClient(cluster.hub.url, cluster.modeller.key) as client:
        with pytest.raises(ModellerError, match="unreachable.*certificate verify failed"):
            await client.register("tester")
    async with ModellerClient(cluster.hub.url, cluster.modeller.key, pinned_cert_sha256="0" * 64) as client:
        with pytest.raises(ModellerError, match="not the pinned 0000"):
            await client.register("tester")


def test_plain_http_to_a_remote_hub_is_refused_unless_allowed() -> None:
    from pod_agent.protocol import IdentityKey

    with pytest.raises(ConfigError, match="--unsafe-allow-http"):
        ModellerClient("http://192.0.2.10:8700", IdentityKey.generate())
    ModellerClient("http://192.0.2.10:8700", IdentityKey.generate(), unsafe_allow_http=True)
