"""Registration policies end to end over loopback HTTP, with the admin side through the real CLI:
open admits any key, token needs a one-time `hub invite` token, approve holds keys until `hub approve`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pod_agent.cli.app import main
from pod_agent.errors import ModellerError
from pod_agent.modeller import ModellerClient
from pod_agent.protocol import IdentityKey


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _stored_text(db: str) -> str:
    """Everything the hub's database holds, as text: the SQLite file, or PostgreSQL's token table."""
    if not db.startswith("postgresql://"):
        return Path(db).read_bytes().decode("latin-1")
    import psycopg

    with psycopg.connect(db) as conn:
        return str(conn.execute("SELECT * FROM enrolment_tokens").fetchall())


def _pod_body(hub: Any, key: IdentityKey, name: str, token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = hub.pod_registration(key, name)
    if token is not None:
        body["enrolment_token"] = token
    return body


async def test_open_registration_admits_any_key(make_hub: Any) -> None:
    hub = await make_hub()
    pod = IdentityKey.generate()
    status, body = await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a"))
    assert status == 200 and body["new"] is True
    assert (await hub.caller(pod).call("GET", "/v1/pod/tasks?wait=0"))[0] == 200


async def test_token_registration_needs_a_one_time_token_from_hub_invite(
    make_hub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = await make_hub(registration="token")
    pod, other = IdentityKey.generate(), IdentityKey.generate()
    status, body = await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a"))
    assert status == 403 and "pod-agent hub invite" in body["error"] and "hub.enrolment_token" in body["error"]

    code, token, _ = _cli(capsys, "hub", "invite", "--db", hub.db, "--note", "clinic a")
    token = token.strip()
    assert code == 0 and len(token) >= 32
    assert token not in _stored_text(hub.db)  # only its hash is stored

    status, body = await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a", token))
    assert status == 200 and body["key_id"] == pod.key_id
    # Single use: another key cannot spend it again.
    status, body = await hub.caller(other).call("POST", "/v1/pods/register", _pod_body(hub, other, "pod-b", token))
    assert status == 403 and "unknown, already used or expired" in body["error"]
    # A known pod re-registers (as on every reconnect) without a token.
    assert (await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a")))[0] == 200

    # The modeller side: --enrolment-token through the client.
    code, modeller_token, _ = _cli(capsys, "hub", "invite", "--db", hub.db)
    async with ModellerClient(hub.base, IdentityKey.generate()) as modeller:
        with pytest.raises(ModellerError, match="enrolment token"):
            await modeller.register("m")
        assert await modeller.register("m", enrolment_token=modeller_token.strip()) == modeller.key.key_id


async def test_an_expired_token_is_refused_and_a_failed_registration_gives_its_token_back(
    make_hub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pod_agent.hub.admission import invite

    hub = await make_hub(registration="token")
    expired = invite(hub.storage, now=1, ttl_s=10)
    pod = IdentityKey.generate()
    status, body = await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a", expired))
    assert status == 403 and "expired" in body["error"]

    token = invite(hub.storage, now=int(__import__("time").time()))
    assert (await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a", token)))[0] == 200
    squatter = IdentityKey.generate()
    second = invite(hub.storage, now=int(__import__("time").time()))
    status, _ = await hub.caller(squatter).call("POST", "/v1/pods/register", _pod_body(hub, squatter, "pod-a", second))
    assert status == 409  # the name is taken; the token was not spent on it
    status, _ = await hub.caller(squatter).call("POST", "/v1/pods/register", _pod_body(hub, squatter, "pod-b", second))
    assert status == 200


async def test_approve_registration_holds_new_keys_until_hub_approve(
    make_hub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = await make_hub(registration="approve")
    pod, modeller = IdentityKey.generate(), IdentityKey.generate()
    status, body = await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a"))
    assert status == 202 and body["pending"] is True and f"pod-agent hub approve {pod.key_id}" in body["message"]
    status, body = await hub.caller(pod).call("GET", "/v1/pod/tasks?wait=0")
    assert status == 403 and f"an admin must run `pod-agent hub approve {pod.key_id}`" in body["error"]
    # Registering again (a reconnect) keeps it pending, not admitted.
    assert (await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a")))[0] == 202

    async with ModellerClient(hub.base, modeller) as client:
        with pytest.raises(ModellerError, match="pod-agent hub approve"):
            await client.register("m")

    code, out, _ = _cli(capsys, "hub", "pending", "--db", hub.db)
    assert code == 0 and pod.key_id in out and "pod-a" in out and modeller.key_id in out
    code, out, _ = _cli(capsys, "hub", "approve", modeller.key_id, "--db", hub.db)
    assert code == 0 and "approved" in out
    # The pending pod is invisible to the modeller until approved.
    status, body = await hub.caller(modeller).call("GET", "/v1/pods")
    assert status == 200 and body["pods"] == []

    code, _, _ = _cli(capsys, "hub", "approve", pod.key_id, "--db", hub.db)
    assert code == 0
    assert (await hub.caller(pod).call("GET", "/v1/pod/tasks?wait=0"))[0] == 200
    assert [p["name"] for p in (await hub.caller(modeller).call("GET", "/v1/pods"))[1]["pods"]] == ["pod-a"]
    status, body = await hub.caller(pod).call("POST", "/v1/pods/register", _pod_body(hub, pod, "pod-a"))
    assert status == 200 and "pending" not in body

    code, out, _ = _cli(capsys, "hub", "pending", "--db", hub.db)
    assert "no keys await approval" in out
    code, _, err = _cli(capsys, "hub", "approve", pod.key_id, "--db", hub.db)
    assert code != 0 and "is not awaiting approval" in err
