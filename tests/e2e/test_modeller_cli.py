"""The modeller CLI builds and signs train tasks from files; `keys --generate` makes a key once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from pod_agent.config.settings import DatasourceSection
from pod_agent.data import open_datasource
from pod_agent.protocol import (
    CohortEntry,
    IdentityKey,
    PublicKey,
    cohort_tree,
    open_envelope,
    parse_envelope,
    spec_sha256,
)
from pod_agent.protocol.messages import TaskPayload

pytestmark = pytest.mark.slow

from e2e_support import POD_AGENT, Cluster, Modeller, wait_for  # type: ignore[import-not-found]  # noqa: E402


def test_submit_signs_a_declarative_train_task_pinned_to_the_spec(
    cluster: Cluster, small_csv: Path, tmp_path: Path
) -> None:
    pod_key = IdentityKey.generate()
    now = int(time.time())
    schema = open_datasource(DatasourceSection(path=small_csv)).schema()
    cluster.hub.query(
        "INSERT INTO pods VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("pod-x", pod_key.key_id, pod_key.public.to_b64(), json.dumps(schema.public(False)), "c" * 64,
         schema.row_count, "strict", 15.0, now, now),
    )
    spec = {
        "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
        "loss": "CrossEntropy",
    }
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    task_id = cluster.modeller.cli(
        "submit", "--pods", "pod-x", "--kind", "train", "--model", str(spec_file), "--style", "declarative",
        "--target", "label", "--epochs", "2", "--batch-size", "32", "--expires-in", "600",
        "--work-dir", str(tmp_path / "work"),
    ).stdout.strip()
    (raw,) = cluster.hub.query("SELECT envelope FROM tasks WHERE task_id = ?", (task_id,))[0]
    task = open_envelope(
        parse_envelope(bytes(raw)), TaskPayload, PublicKey.from_b64(cluster.modeller.key.public.to_b64())
    )
    # The signed cohort is pod-x alone, at the schema hash the hub lists for it.
    entry = CohortEntry(pod="pod-x", schema_hash="c" * 64, key_id=pod_key.key_id)
    assert task.kind == "train" and task.cohort == cohort_tree([entry]).commitment
    assert task.model is not None and task.model.spec == spec and task.model.sha256 == spec_sha256(spec)
    assert task.data is not None and task.data.target == "label"
    assert (task.hyperparameters.epochs, task.hyperparameters.batch_size) == (2, 32)
    assert task.expires_at - task.issued_at == 600
    # A train task always pins the weights it starts from: here the spec freshly built from pod-x's schema.
    starting = tmp_path / "work" / "starting-weights.safetensors"
    assert task.weights is not None and task.weights.sha256 == hashlib.sha256(starting.read_bytes()).hexdigest()
    assert set(load_file(str(starting))) == {"_model.0.weight", "_model.0.bias"}

    fresh = Modeller(cluster.modeller.key, tmp_path / "new" / "modeller.pem", cluster.hub.url)
    first = fresh.cli("keys", "--generate").stdout
    again = fresh.cli("keys", "--generate").stdout
    assert "new, mode 0600" in first and "new" not in again
    assert (tmp_path / "new" / "modeller.pem").stat().st_mode & 0o077 == 0
    assert first.splitlines()[-1] == again.splitlines()[-1]


def test_pinned_pod_keys_from_keys_show_verify_results_and_a_wrong_pin_refuses_them(
    cluster: Cluster, small_csv: Path, tmp_path: Path
) -> None:
    agents = [cluster.add_pod(name, small_csv) for name in ("pod-a", "pod-b")]
    wait_for(lambda: cluster.online("pod-a", "pod-b"), what="both pods registered")
    shown = [subprocess.run([POD_AGENT, "keys", "show", "--config", str(a.config)], capture_output=True, text=True,
                            check=True).stdout for a in agents]
    lines = [line.removeprefix("pin line:").strip() for out in shown for line in out.splitlines()
             if line.startswith("pin line:")]
    pins = tmp_path / "pods.toml"
    pins.write_text(lines[0] + "\n")  # pod-a only
    pinned = Modeller(cluster.modeller.key, cluster.modeller.key_path, cluster.hub.url, ["--pod-keys", str(pins)])
    keys = {p["name"]: p["key"] for p in json.loads(pinned.cli("pods", "--json").stdout)}
    assert keys == {"pod-a": "pinned", "pod-b": "unpinned"}

    task_id = pinned.cli("submit", "--pods", "pod-a", "--kind", "schema-stats").stdout.strip()
    shown_results = pinned.cli("results", task_id, "--out", str(tmp_path / "out"), "--wait", "30").stdout
    assert shown_results.splitlines()[1].split()[:4] == ["pod-a", "done", "-", "pinned"]

    # The file pins pod-a to pod-b's key (what a hub swapping keys would look like from this side).
    pins.write_text(lines[1].replace('"pod-b"', '"pod-a"') + "\n")
    assert {p["name"]: p["key"] for p in json.loads(pinned.cli("pods", "--json").stdout)}["pod-a"] == "MISMATCH"
    refused = pinned.cli("results", task_id, "--out", str(tmp_path / "again"), check=False)
    assert refused.returncode == 1 and "fails verification" in refused.stderr
    assert not (tmp_path / "again" / "pod-a.json").exists()
    assert all(a.terminate() == 0 for a in agents)
