"""The hostile-hub corpus: a real ``pod-agent run`` against a hub that sends each kind of bad reply once.

For every case (``hostile_hub.CASES``: non-UTF-8, deeply nested JSON on the WebSocket and as a
reply, wrong shapes, an oversized message, a 400 MiB JSON reply, 8 MiB of tiny values, an endless
blob, a blob past its signed size, slow drips) the agent must treat the hub as unavailable, not crash: it stays up, its
peak resident memory during the case stays within PEAK_RSS_BUDGET_MIB of what it used before the
corpus began, and it then serves the next good task. One agent process serves the whole corpus
(in order: WebSocket and registration cases first, then the long-poll cases, which make it fall
back to polling), and must still stop cleanly on SIGTERM at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostile_hub import CASES, SIGNED_BLOB_BYTES, HostileHub
from task_support import cohort_of, entries

from pod_agent.modeller import build_task
from pod_agent.protocol import IdentityKey, cohort_tree, envelope_bytes, sign_envelope, spec_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, TaskPayload, WeightsRef

pytestmark = pytest.mark.slow

# What one bad reply may add to the agent's peak resident memory (its reply cap is 8 MiB).
PEAK_RSS_BUDGET_MIB = 150
# 1500 rows: a train task's splits stay over the default min_rows of 100, so it is accepted and reaches the blob.
CSV = "age,hours,TARGET\n" + "".join(
    f"{20 + i % 40},{i % 60},{'>50K' if (i % 40) > 20 else '<=50K'}\n" for i in range(1500))
SPEC: dict[str, Any] = {
    "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
    "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1,
}
# As `pod-agent hub invite` would print it: the pod sends it with every registration.
ENROLMENT_TOKEN = "t0ken_" + "x" * 40
# Pinned weights the fake hub never serves honestly: any sha256 will do.
WEIGHTS_SHA256 = "ab" * 32
# What the agent's log says when each case meets the defence meant for it.
DEFENCE = {
    "ws-non-utf8": "task connection's framing: Invalid UTF-8",
    "ws-deep-json": "task connection is not usable JSON: JSON nested too deeply",
    "ws-wrong-shape": "task connection is not a HubPush: task.task_id: string_type",
    "ws-oversized": "task connection's framing: Message size",
    "ws-task-flood": "task refused: payload_too_large",
    "ws-many-values": "message on the task connection holds more than 262144 JSON values",
    "register-non-utf8": "register is not usable JSON: message is not UTF-8",
    "register-wrong-shape": "register is not a PodRegistered",
    "register-giant-json": "register runs past the 8388608-byte cap",
    "register-slow-drip": "did not finish answering POST /v1/pods/register within 2 s",
    "blob-endless": f"than the {SIGNED_BLOB_BYTES} bytes expected",
    "blob-over-signed-size": f"than the {SIGNED_BLOB_BYTES} bytes expected",
    "blob-slow-drip": "within 3 s",
    "poll-deep-json": "tasks?wait=0.5 is not usable JSON: JSON nested too deeply",
    "poll-wrong-shape": "tasks?wait=0.5 is not a PendingTasks: tasks: list_type",
    "poll-non-utf8": "tasks?wait=0.5 is not usable JSON: message is not UTF-8",
    "poll-giant-json": "tasks?wait=0.5 runs past the 8388608-byte cap",
    "poll-many-values": "tasks?wait=0.5 holds more than 262144 JSON values",
    "poll-slow-drip": "did not finish answering GET /v1/pod/tasks?wait=0.5 within 2.5 s",
}


@dataclass
class Rig:
    hub: HostileHub
    agent: subprocess.Popen[bytes]
    modeller: IdentityKey
    log: Path
    baseline_rss_kib: int


def _pod_toml(tmp: Path, hub_url: str, modeller: IdentityKey) -> Path:
    (tmp / "table.csv").write_text(CSV)
    state_dir = tmp / "pod"
    state_dir.mkdir()
    IdentityKey.generate().save(state_dir / "identity.pem")
    path = tmp / "pod.toml"
    path.write_text(f"""
[pod]
name = "pod-a"
state_dir = "{state_dir}"

[hub]
url = "{hub_url}"
heartbeat_s = 0.5
backoff_initial_s = 0.05
backoff_cap_s = 0.5
request_timeout_s = 2.0
blob_timeout_s = 3.0
enrolment_token = "{ENROLMENT_TOKEN}"

[datasource]
path = "{tmp / 'table.csv'}"

[security]
sandbox = "none"

[[security.modellers]]
name = "m"
public_key = "{modeller.public.to_b64()}"
role = "super"

[privacy]
require_secure_aggregation = false

[sandbox_limits]
warm_worker = false

[ops]
health_port = 0
""")
    return path


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def _reset_peak(pid: int) -> None:
    """Start VmHWM afresh at the current RSS (Linux: write 5 to clear_refs), so that it is this case's peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _task(rig: Rig, kind: str = "schema-stats", **fields: Any) -> TaskPayload:
    registration = rig.hub.record.registration
    assert registration is not None
    task = build_task(
        modeller_id=rig.modeller.key_id, cohort=entries(["pod-a"], registration.schema_hash),
        kind=kind,  # type: ignore[arg-type]
        **fields,
    )
    proof = cohort_tree(cohort_of(task)).proof("pod-a").model_dump()
    rig.hub.deliver(task.task_id, envelope_bytes(sign_envelope(task, rig.modeller)).decode(), proof)
    return task


def _result(rig: Rig, task: TaskPayload, *, timeout_s: float = 20) -> tuple[str, str | None]:
    rig.hub.wait_for(lambda: task.task_id in rig.hub.record.results, timeout_s=timeout_s,
                     message=f"no result for the {task.kind} task")
    result = rig.hub.record.results[task.task_id]
    return result.status, result.reason


def _log_since(rig: Rig, offset: int) -> str:
    return rig.log.read_bytes()[offset:].decode(errors="replace")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("hostile")
    modeller = IdentityKey.generate()
    log = tmp / "agent.log"
    with HostileHub() as hub, log.open("wb") as log_file:
        agent = subprocess.Popen(
            [sys.executable, "-m", "pod_agent", "run", "--config", str(_pod_toml(tmp, hub.url, modeller))],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            hub.wait_for(lambda: hub.record.registration is not None, timeout_s=60, message="the pod did not register")
            assert hub.record.registration is not None and hub.record.registration.enrolment_token == ENROLMENT_TOKEN
            rig = Rig(hub, agent, modeller, log, baseline_rss_kib=0)
            # Warm: the first task imports what tasks need; the baseline is the agent at work, not at start.
            assert _result(rig, _task(rig), timeout_s=60) == ("done", None)
            rig.baseline_rss_kib = _status_kib(agent.pid, "VmRSS")
            print(f"\nhostile-hub corpus: agent baseline RSS {rig.baseline_rss_kib / 1024:.0f} MiB")
            yield rig
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0, log.read_text(errors="replace")[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()


@pytest.mark.parametrize("case", list(CASES))
def test_a_misbehaving_hub_is_an_outage_and_the_agent_serves_the_next_task(rig: Rig, case: str) -> None:
    _reset_peak(rig.agent.pid)
    offset = rig.log.stat().st_size
    rig.hub.provoke(case)
    if CASES[case] == "blob":
        train = _task(
            rig, "train", model=ModelRef(style="declarative", name="linear", spec=SPEC, sha256=spec_sha256(SPEC)),
            data=DataSelection(target="TARGET"), hyperparameters=Hyperparameters(epochs=1, batch_size=32),
            weights=WeightsRef(blob_id=WEIGHTS_SHA256, sha256=WEIGHTS_SHA256, size_bytes=SIGNED_BLOB_BYTES),
        )
        assert _result(rig, train) == ("failed", "weights_unavailable")
        assert rig.hub.served(case)
        assert not list((rig.log.parent / "pod" / "work").glob("*/input/*.part")), "a partial blob was left behind"
    else:
        rig.hub.wait_for(lambda: rig.hub.served(case), timeout_s=20, message=f"the pod never met {case}")
    rig.hub.wait_for(lambda: DEFENCE[case] in _log_since(rig, offset), timeout_s=20,
                     message=f"the agent's log never said {DEFENCE[case]!r} for {case}")
    assert rig.agent.poll() is None, f"the agent ended on {case}"
    assert _result(rig, _task(rig)) == ("done", None)
    peak_kib = _status_kib(rig.agent.pid, "VmHWM")
    growth_mib = (peak_kib - rig.baseline_rss_kib) / 1024
    print(f"hostile-hub corpus: {case:24s} peak RSS {peak_kib / 1024:6.0f} MiB ({growth_mib:+.0f} MiB)")
    assert growth_mib < PEAK_RSS_BUDGET_MIB


def test_a_hub_answering_long_polls_at_once_with_nothing_does_not_make_the_pod_spin(rig: Rig) -> None:
    assert not rig.hub.websocket_offered, "runs after the corpus's poll cases, with the pod polling"
    before = rig.hub.record.polls
    rig.hub.answer_polls_at_once(for_s=2.0)
    time.sleep(2.0)
    polls = rig.hub.record.polls - before
    print(f"hostile-hub corpus: instant empty polls for 2 s: {polls} polls")
    # Backed off (0.05 s doubling to 0.5 s, jittered): about ten polls; a pod that spins makes thousands.
    assert 1 <= polls < 60
    assert _result(rig, _task(rig)) == ("done", None)
