"""Models are private by default: the source goes to its publisher and the pods a task of the publisher
targets; `public` (modeller CLI --public) shares it with every registered key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hub_tasks import task_submission

from pod_agent.cli.app import main
from pod_agent.modeller import ModellerClient
from pod_agent.protocol import IdentityKey, source_sha256

SOURCE = "class Net:\n    pass\n"


async def _keys(hub: Any) -> dict[str, IdentityKey]:
    keys = {name: IdentityKey.generate() for name in ("owner", "stranger-m", "pod-a", "pod-b")}
    for name in ("owner", "stranger-m"):
        assert (
            await hub.caller(keys[name]).call(
                "POST", "/v1/modellers/register", {"name": name, "public_key": keys[name].public.to_b64()}
            )
        )[0] == 200
    for name in ("pod-a", "pod-b"):
        assert (await hub.caller(keys[name]).call("POST", "/v1/pods/register", hub.pod_registration(keys[name], name)))[
            0
        ] == 200
    return keys


async def test_a_private_model_is_hidden_from_strangers_and_served_to_targeted_pods(hub: Any) -> None:
    keys = await _keys(hub)
    async with ModellerClient(hub.base, keys["owner"]) as owner:
        assert await owner.publish_model(
            name="net", version="1", style="module", source=SOURCE, sha256=source_sha256(SOURCE), class_name="Net"
        ) == "stored"
    for who in ("stranger-m", "pod-a", "pod-b"):
        status, body = await hub.caller(keys[who]).call("GET", "/v1/models/net/1")
        assert status == 404 and "shared with this key" in body["error"], who
    assert (await hub.caller(keys["owner"]).call("GET", "/v1/models/net/1"))[1]["source"] == SOURCE

    assert (
        await hub.caller(keys["owner"]).call("POST", "/v1/tasks", raw=task_submission(keys["owner"], ["pod-a"]))
    )[0] == 201
    status, body = await hub.caller(keys["pod-a"]).call("GET", "/v1/models/net/1")
    assert status == 200 and body["source"] == SOURCE
    assert (await hub.caller(keys["pod-b"]).call("GET", "/v1/models/net/1"))[0] == 404
    assert (await hub.caller(keys["stranger-m"]).call("GET", "/v1/models/net/1"))[0] == 404
    # A stranger's task targeting pod-b does not open the owner's model to pod-b.
    assert (
        await hub.caller(keys["stranger-m"]).call(
            "POST", "/v1/tasks", raw=task_submission(keys["stranger-m"], ["pod-b"])
        )
    )[0] == 201
    assert (await hub.caller(keys["pod-b"]).call("GET", "/v1/models/net/1"))[0] == 404


async def test_a_model_published_with_cli_public_is_served_to_every_registered_key(
    hub: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = await _keys(hub)
    key_file = tmp_path / "modeller.pem"
    keys["owner"].save(key_file, None)
    model = tmp_path / "net.py"
    model.write_text(SOURCE)

    def publish() -> None:
        # The CLI runs its own event loop: off this one.
        main(["modeller", "--hub", hub.base, "--key", str(key_file), "publish", str(model), "--name", "shared",
              "--version", "1", "--class", "Net", "--style", "module", "--public"])

    import asyncio

    with pytest.raises(SystemExit) as exit_info:
        await asyncio.to_thread(publish)
    assert exit_info.value.code in (0, None)
    assert "shared@1 stored (public" in capsys.readouterr().out
    for who in ("stranger-m", "pod-b"):
        status, body = await hub.caller(keys[who]).call("GET", "/v1/models/shared/1")
        assert status == 200 and body["source"] == SOURCE, who
    # Private by default through the client, and the owner may share it later by publishing it again.
    async with ModellerClient(hub.base, keys["owner"]) as owner:
        await owner.publish_model(
            name="later", version="1", style="module", source=SOURCE, sha256=source_sha256(SOURCE), class_name="Net"
        )
        assert (await hub.caller(keys["stranger-m"]).call("GET", "/v1/models/later/1"))[0] == 404
        assert await owner.publish_model(
            name="later", version="1", style="module", source=SOURCE, sha256=source_sha256(SOURCE), class_name="Net",
            public=True,
        ) == "duplicate"
    assert (await hub.caller(keys["stranger-m"]).call("GET", "/v1/models/later/1"))[0] == 200
