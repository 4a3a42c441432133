"""`pod-agent modeller ...` against a real hub process: the README's modeller steps, without their traps.

The hub's database is opened beside the process to register pods and store their signed results, as
a pod would (a pod's key signs them); everything the modeller does goes through the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from pod_agent.cli.app import load_command
from pod_agent.hub import SqliteStorage
from pod_agent.modeller import ModellerClient
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope
from pod_agent.protocol.messages import BlobRef, ResultPayload, TaskPayload

_MODEL = "class Net:\n    pass\n"


@dataclass
class Desk:
    """A modeller's desk: a registered key, a hub with pods, a model file and a work dir."""

    cli: Callable[..., Any]
    hub: str
    db: Path
    key: Path
    tmp: Path
    list_pod: Callable[..., IdentityKey]
    pod_keys: dict[str, IdentityKey]

    def modeller(self, *args: str) -> Any:
        return self.cli("modeller", "--hub", self.hub, "--key", str(self.key), *args)

    def storage(self) -> SqliteStorage:
        return SqliteStorage(str(self.db))

    def add_pod(self, name: str, *, last_seen: int | None = None) -> IdentityKey:
        storage = self.storage()
        try:
            storage.release_pod(name)  # the module's hub kept an earlier test's pod of this name
            self.pod_keys[name] = self.list_pod(storage, name, last_seen=last_seen)
        finally:
            storage.close()
        return self.pod_keys[name]

    def hub_task(self, task_id: str) -> TaskPayload:
        storage = self.storage()
        try:
            record = storage.get_task(task_id)
        finally:
            storage.close()
        assert record is not None
        return TaskPayload.model_validate(json.loads(record.envelope)["payload"])


@pytest.fixture
def desk(
    cli, tmp_path: Path, module_hub: tuple[str, Path], list_pod: Callable[..., IdentityKey],
    monkeypatch: pytest.MonkeyPatch,
) -> Desk:
    """A new modeller key and pod-a (a new key each test: the hub keeps the last one registered)."""
    monkeypatch.chdir(tmp_path)  # submit's default --work-dir (starting weights) is relative
    (tmp_path / "model.py").write_text(_MODEL)
    url, db = module_hub
    made = Desk(cli, url, db, tmp_path / "modeller.pem", tmp_path, list_pod, {})
    assert made.modeller("keys", "--generate").code == 0
    registered = made.modeller("register", "--name", f"alice-{tmp_path.name}")
    assert registered.code == 0, registered.err
    made.add_pod("pod-a")
    return made


def _weights(path: Path, value: float = 0.5) -> Path:
    save_file({"layer.weight": np.full((2, 3), value, dtype=np.float32)}, str(path))
    return path


_SUBMIT = ("submit", "--model", "model.py", "--class", "Net", "--style", "module", "--pods", "pod-a", "--target", "y")


def test_modeller_keys_generate_prints_the_pod_toml_entry(cli, tmp_path: Path) -> None:
    result = cli("modeller", "--key", str(tmp_path / "m.pem"), "keys", "--generate", "--name", "alice")
    assert result.code == 0, result.err
    entry = result.out[result.out.index("[[security.modellers]]"):]
    parsed = tomllib.loads("\n".join(line.split("#")[0].strip() for line in entry.splitlines()))
    (modeller,) = parsed["security"]["modellers"]
    key = IdentityKey.load(tmp_path / "m.pem", None)
    assert modeller == {"name": "alice", "public_key": key.public.to_b64(), "role": "general"}


def test_submit_weights_uploads_and_pins_them(desk: Desk) -> None:
    weights = _weights(desk.tmp / "final_model.safetensors")
    result = desk.modeller(*_SUBMIT, "--kind", "evaluate", "--weights", str(weights))
    assert result.code == 0, result.err
    task = desk.hub_task(result.out.strip())
    assert task.weights is not None and task.weights.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()

    async def fetch() -> bytes:
        async with ModellerClient(desk.hub, IdentityKey.load(desk.key, None)) as client:
            return (await client.download_blob(task.weights.sha256, desk.tmp / "back")).read_bytes()  # type: ignore[union-attr]

    assert asyncio.run(fetch()) == weights.read_bytes()


def test_evaluate_without_weights_is_refused_unless_untrained(desk: Desk) -> None:
    refused = desk.modeller(*_SUBMIT, "--kind", "evaluate")
    assert refused.code != 0 and refused.err.count("\n") == 1
    assert "without --weights would score a freshly initialised model" in refused.err and "--untrained" in refused.err
    untrained = desk.modeller(*_SUBMIT, "--kind", "evaluate", "--untrained")
    assert untrained.code == 0, untrained.err
    assert desk.hub_task(untrained.out.strip()).weights is None


def test_returns_weights_is_signed_into_the_train_task_and_refused_for_evaluate(desk: Desk) -> None:
    weights = _weights(desk.tmp / "start.safetensors")
    result = desk.modeller(
        *_SUBMIT, "--kind", "train", "--epochs", "1", "--weights", str(weights), "--returns", "weights"
    )
    assert result.code == 0, result.err
    assert desk.hub_task(result.out.strip()).returns == "weights"
    wrong = desk.modeller(*_SUBMIT, "--kind", "evaluate", "--weights", str(weights), "--returns", "weights")
    assert wrong.code != 0 and "--returns weights applies to train tasks" in wrong.err
    typo = desk.modeller(*_SUBMIT, "--kind", "train", "--weights", str(weights), "--returns", "both")
    assert typo.code != 0 and "--returns 'both' is not one of update, weights" in typo.err


def test_submit_and_train_share_one_encoding_default(desk: Desk) -> None:
    weights = _weights(desk.tmp / "start.safetensors")
    submitted = desk.modeller(*_SUBMIT, "--kind", "train", "--epochs", "1", "--weights", str(weights))
    task = desk.hub_task(submitted.out.strip())
    assert task.data is not None and task.data.categorical_encoding == "hashed"
    modeller = load_command("modeller")
    defaults = {
        name: next(p.default for p in modeller.commands[name].params if p.name == "encoding")
        for name in ("submit", "train")
    }
    assert defaults == {"submit": "hashed", "train": "hashed"}


def _store_result(desk: Desk, task_id: str, pod: str, *, blob: BlobRef | None, metrics: dict[str, float]) -> None:
    payload = ResultPayload(
        task_id=task_id, pod=pod, kind="train", status="done", metrics=metrics, n_rows=80, blob=blob, produced_at=1,
    )
    storage = desk.storage()
    try:
        storage.put_result(
            task_id, pod, envelope_bytes(sign_envelope(payload, desk.pod_keys[pod])), status="done", now=1
        )
    finally:
        storage.close()


def _uploaded(desk: Desk, path: Path) -> BlobRef:
    async def upload() -> BlobRef:
        async with ModellerClient(desk.hub, IdentityKey.load(desk.key, None)) as client:
            return await client.upload_blob(path)

    return asyncio.run(upload())


def test_results_name_files_for_what_they_hold_and_print_metrics_and_key_source(desk: Desk) -> None:
    desk.add_pod("pod-b")
    weights = _weights(desk.tmp / "start.safetensors")
    base = ("submit", "--model", "model.py", "--class", "Net", "--style", "module", "--target", "y",
            "--kind", "train", "--epochs", "1", "--weights", str(weights))
    update_task = desk.modeller(*base, "--pods", "pod-a,pod-b").out.strip()
    weights_task = desk.modeller(*base, "--pods", "pod-a", "--returns", "weights").out.strip()
    blob = _uploaded(desk, _weights(desk.tmp / "update.safetensors", 0.01))
    _store_result(desk, update_task, "pod-a", blob=blob, metrics={"train_loss": 0.5, "val_accuracy": 0.8125})
    _store_result(desk, update_task, "pod-b", blob=blob, metrics={"train_loss": 0.25})
    _store_result(desk, weights_task, "pod-a", blob=blob, metrics={})

    unpinned = desk.modeller("results", update_task, "--out", str(desk.tmp / "r1"))
    assert unpinned.code == 0, unpinned.err
    head, a_row, b_row = unpinned.out.splitlines()
    assert head.split() == ["pod", "status", "code", "key", "train_loss", "val_accuracy", "file"]
    assert a_row.split() == ["pod-a", "done", "-", "unpinned", "0.5", "0.8125", "pod-a.update.safetensors"]
    assert b_row.split() == ["pod-b", "done", "-", "unpinned", "0.25", "-", "pod-b.update.safetensors"]
    assert (desk.tmp / "r1" / "pod-a.update.safetensors").read_bytes() == (desk.tmp / "update.safetensors").read_bytes()

    pins = desk.tmp / "pods.toml"
    pins.write_text(f'"pod-a" = "{desk.pod_keys["pod-a"].public.to_b64()}"\n')
    pinned = desk.cli("modeller", "--hub", desk.hub, "--key", str(desk.key), "--pod-keys", str(pins),
                      "results", weights_task, "--out", str(desk.tmp / "r2"))
    assert pinned.code == 0, pinned.err
    assert pinned.out.splitlines()[1].split() == ["pod-a", "done", "-", "pinned", "pod-a.weights.safetensors"]

    (desk.tmp / "tasks" / f"{weights_task}.json").unlink()  # as if submitted with another key file
    elsewhere = desk.modeller("results", weights_task, "--out", str(desk.tmp / "r3"))
    assert "pod-a.update-or-weights.safetensors" in elsewhere.out
    assert "whether its tensors are an update or weights is unknown" in elsewhere.err


def test_pods_wait_returns_once_the_pod_comes_online(desk: Desk) -> None:
    desk.add_pod("pod-late", last_seen=1)

    def comes_online() -> None:
        time.sleep(1.0)
        storage = desk.storage()
        try:
            storage.touch_pod("pod-late", now=int(time.time()))
        finally:
            storage.close()

    started = time.monotonic()
    waker = threading.Thread(target=comes_online)
    waker.start()
    try:
        result = desk.modeller("pods", "--wait", "20", "--pods", "pod-late")
    finally:
        waker.join()
    assert result.code == 0, result.err
    assert 0.9 < time.monotonic() - started < 15
    assert any(line.split()[:2] == ["pod-late", "online"] for line in result.out.splitlines())


def test_pods_wait_names_the_pods_still_offline(desk: Desk) -> None:
    desk.add_pod("pod-gone", last_seen=1)
    result = desk.modeller("pods", "--wait", "1", "--pods", "pod-a,pod-gone")
    assert result.code != 0 and result.err.count("\n") == 1
    assert "still offline after 1 s: ['pod-gone']" in result.err


def test_secure_train_on_one_pod_fails_before_any_task_with_the_fix(desk: Desk) -> None:
    desk.add_pod("pod-solo")  # no other test sends it tasks
    result = desk.modeller("train", "--model", "model.py", "--class", "Net", "--style", "module", "--pods", "pod-solo",
                           "--target", "y", "--out", str(desk.tmp / "out"))
    assert result.code != 0 and result.err.count("\n") == 1
    assert "secure aggregation needs at least 3 pods" in result.err and "--plain" in result.err
    assert "dropped out" not in result.err
    storage = desk.storage()
    try:
        assert storage.pending_tasks("pod-solo") == []
    finally:
        storage.close()
