"""A sandboxed task's worker is reserved while the agent prepares its input: when the prepared input fails the
owner's floor, the task fails with the floor's code, its reserved child ends unused (no process of it is left)
and the next task's child is forked ahead, through the real daemon on the fork server."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from agent_support import hub_with_agent
from task_support import cohort_of, entries

from pod_agent.modeller import VerifiedResult, build_task
from pod_agent.protocol import spec_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef

sys.path.insert(0, str(Path(__file__).parents[1] / "sandbox"))  # the fork server tests' process probes
from sbx_helpers import SANDBOX_USER, is_live, one_parked_child

pytestmark = pytest.mark.slow

ENSURE_USER = Path(__file__).parents[1] / "sandbox" / "ensure_sandbox_user.py"
SPEC = {"layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
        "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1}
# The target is set on 60 of 1500 rows: the verifier's estimate from the table's rows (10 % of 1500 for the
# test split) clears min_rows = 100; the prepared test split (about 6 rows) does not.
SPARSE_CSV = "age,hours,TARGET\n" + "".join(
    f"{20 + i % 40},{i % 60},{('>50K' if i % 2 else '<=50K') if i % 25 == 0 else ''}\n" for i in range(1500))


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    async with asyncio.timeout(30):
        while text not in caplog.text:
            await asyncio.sleep(0.02)


async def test_an_input_under_the_floor_fails_too_few_rows_and_ends_its_reserved_child(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pod_agent.sandbox")
    subprocess.run([sys.executable, str(ENSURE_USER), SANDBOX_USER], check=True)
    async with hub_with_agent(tmp_path, SPARSE_CSV, security={"sandbox": "strict", "sandbox_user": SANDBOX_USER},
                              sandbox_limits={"warm_worker": True}) as rig:
        parked = await one_parked_child()
        # Its rehearsal done (a take of a child still rehearsing, cancelled when the input fails, would leave it
        # the fork server's for the next task: not the path under test).
        (pid,) = parked
        await _logged(caplog, f"sandbox child {pid} parked for ")
        task = build_task(
            modeller_id=rig.modeller.key.key_id, cohort=entries(["pod-a"], rig.pod.schema_hash), kind="evaluate",
            model=ModelRef(style="declarative", name="linear", spec=SPEC, sha256=spec_sha256(SPEC)),
            data=DataSelection(target="TARGET"), hyperparameters=Hyperparameters(epochs=1, batch_size=32),
        )
        await rig.modeller.submit_task(task, cohort_of(task))
        result = (await rig.modeller.wait_results(task.task_id, ["pod-a"], timeout_s=120))["pod-a"]
        assert isinstance(result, VerifiedResult), result
        assert (result.payload.status, result.payload.reason) == ("failed", "too_few_rows")
        assert not any(is_live(pid) for pid in parked)
        await one_parked_child(other_than=frozenset(parked))
