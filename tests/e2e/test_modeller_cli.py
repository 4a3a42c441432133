"""The modeller CLI builds and signs train tasks from files; `keys --generate` makes a key once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pod_agent.protocol import IdentityKey, PublicKey, open_envelope, parse_envelope, spec_sha256
from pod_agent.protocol.messages import TaskPayload

pytestmark = pytest.mark.slow

from e2e_support import Cluster, Modeller  # type: ignore[import-not-found]  # noqa: E402


def test_submit_signs_a_declarative_train_task_pinned_to_the_spec(cluster: Cluster, tmp_path: Path) -> None:
    pod_key = IdentityKey.generate()
    now = int(time.time())
    cluster.hub.query(
        "INSERT INTO pods VALUES (?,?,?,?,?,?,?,?,?,?,NULL)",
        ("pod-x", pod_key.key_id, pod_key.public.to_b64(), '{"columns": []}', "c" * 64, 100, "strict", 15.0, now, now),
    )
    spec = {"layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}], "loss": "CrossEntropy"}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    task_id = cluster.modeller.cli(
        "submit", "--pods", "pod-x", "--kind", "train", "--model", str(spec_file), "--style", "declarative",
        "--target", "TARGET", "--epochs", "2", "--batch-size", "32", "--expires-in", "600",
    ).stdout.strip()
    (raw,) = cluster.hub.query("SELECT envelope FROM tasks WHERE task_id = ?", (task_id,))[0]
    task = open_envelope(parse_envelope(bytes(raw)), TaskPayload, PublicKey.from_b64(cluster.modeller.key.public.to_b64()))
    assert task.kind == "train" and task.pods == ["pod-x"] and task.schema_hash == "c" * 64
    assert task.model is not None and task.model.spec == spec and task.model.sha256 == spec_sha256(spec)
    assert task.data is not None and task.data.target == "TARGET"
    assert (task.hyperparameters.epochs, task.hyperparameters.batch_size) == (2, 32)
    assert task.expires_at - task.issued_at == 600

    fresh = Modeller(cluster.modeller.key, tmp_path / "new" / "modeller.pem", cluster.hub.url)
    first = fresh.cli("keys", "--generate").stdout
    again = fresh.cli("keys", "--generate").stdout
    assert "new, mode 0600" in first and "new" not in again
    assert (tmp_path / "new" / "modeller.pem").stat().st_mode & 0o077 == 0
    assert first.splitlines()[-1] == again.splitlines()[-1]
