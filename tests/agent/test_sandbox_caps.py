"""A sandbox cap that stops a task reaches the modeller as the word for that cap, through the real daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import hub_with_agent
from task_support import cohort_of, entries

from pod_agent.modeller import ModellerClient, VerifiedResult, build_task
from pod_agent.protocol import source_sha256
from pod_agent.protocol.messages import DataSelection, Hyperparameters, ModelRef, TaskLimits

pytestmark = pytest.mark.slow

# Enough rows that every split clears the default privacy.min_rows, so evaluate is admitted.
CSV = "age,hours,TARGET\n" + "".join(
    f"{20 + i % 40},{i % 60},{'>50K' if i % 40 > 20 else '<=50K'}\n" for i in range(3000)
)
MEMORY_MB = 2048
MEMORY_HOG = f"""
import torch
from torch import nn
from torch.nn import functional as F


class Hog(nn.Module):
    def __init__(self, input_size, n_classes):
        super().__init__()
        self.body = nn.Linear(input_size, n_classes)

    def forward(self, inputs, labels=None):
        hoard = torch.ones({2 * MEMORY_MB} << 20, dtype=torch.uint8)
        outputs = self.body(inputs) + hoard[0]
        if labels is None:
            return {{"outputs": outputs}}
        return {{"outputs": outputs, "loss": F.cross_entropy(outputs, labels)}}
"""


@pytest.fixture
async def hub_and_pod(tmp_path: Path) -> AsyncIterator[tuple[ModellerClient, Any]]:
    async with hub_with_agent(tmp_path, CSV) as rig:
        yield rig.modeller, rig.pod


async def test_a_model_allocating_twice_the_memory_cap_fails_as_memory_exceeded(
    hub_and_pod: tuple[ModellerClient, Any]
) -> None:
    modeller, pod = hub_and_pod
    task = build_task(
        modeller_id=modeller.key.key_id,
        cohort=entries(["pod-a"], pod.schema_hash),
        kind="evaluate",
        model=ModelRef(
            style="module", name="hog", class_name="Hog", source=MEMORY_HOG, sha256=source_sha256(MEMORY_HOG)
        ),
        data=DataSelection(target="TARGET"),
        hyperparameters=Hyperparameters(epochs=1),
    ).model_copy(update={"limits": TaskLimits(memory_mb=MEMORY_MB)})
    await modeller.submit_task(task, cohort_of(task))
    result = (await modeller.wait_results(task.task_id, ["pod-a"], timeout_s=120))["pod-a"]
    assert isinstance(result, VerifiedResult), result
    assert (result.payload.status, result.payload.reason) == ("failed", "memory_exceeded")
