"""End to end: a real hub and two real agents on loopback; the modeller CLI submits and collects."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from e2e_support import POD_AGENT, Cluster, wait_for  # type: ignore[import-not-found]

from pod_agent.protocol import PublicKey, open_envelope
from pod_agent.protocol.messages import Envelope, ResultPayload

pytestmark = pytest.mark.slow



def test_two_pods_return_signed_schema_stats_to_the_modeller_cli(
    cluster: Cluster, adult_csv: Path, small_csv: Path, tmp_path: Path
) -> None:
    a = cluster.add_pod("adult-a", adult_csv)
    b = cluster.add_pod("adult-b", adult_csv)
    wait_for(lambda: cluster.online("adult-a", "adult-b"), what="both pods registered")
    listed = json.loads(cluster.modeller.cli("pods", "--json").stdout)
    assert {p["name"]: p["online"] for p in listed} == {"adult-a": True, "adult-b": True}

    task_id = cluster.modeller.cli("submit", "--pods", "adult-a,adult-b", "--kind", "schema-stats").stdout.strip()
    out = tmp_path / "results"
    shown = cluster.modeller.cli("results", task_id, "--out", str(out), "--wait", "30").stdout
    assert [line.split()[:4] for line in shown.splitlines()[1:3]] == [
        ["adult-a", "done", "-", "unpinned"], ["adult-b", "done", "-", "unpinned"]
    ], shown

    table = pacsv.read_csv(adult_csv)
    keys = {p["name"]: PublicKey.from_b64(p["public_key"]) for p in listed}
    for pod in ("adult-a", "adult-b"):
        record: dict[str, Any] = json.loads((out / f"{pod}.json").read_text())
        result = open_envelope(Envelope.model_validate(record["envelope"]), ResultPayload, keys[pod])
        assert result.status == "done" and result.pod == pod and result.task_id == task_id
        assert result.n_rows == table.num_rows == result.metrics["rows"]
        age = pc.cast(table["age"], "float64")
        assert math.isclose(result.metrics["mean.age"], pc.mean(age).as_py(), rel_tol=1e-9)
        assert math.isclose(result.metrics["std.age"], pc.stddev(age, ddof=1).as_py(), rel_tol=1e-9)
        assert not any(k.startswith(("min", "max")) for k in result.metrics)
    status = cluster.modeller.cli("status", task_id).stdout
    assert status.count("result=done") == 2
    assert a.task_status(task_id) == b.task_status(task_id) == "delivered"
    # The pod owner's own record of it, read next to the running agent.
    record = subprocess.run([POD_AGENT, "tasks", "list", "--config", str(a.config), "--json"],
                            capture_output=True, text=True, check=True)
    (entry,) = json.loads(record.stdout)
    assert (entry["task_id"], entry["kind"], entry["outcome"], entry["delivered"]) == (
        task_id,
        "schema-stats",
        "done",
        True,
    )
    assert a.terminate() == 0 and b.terminate() == 0
