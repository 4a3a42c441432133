# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A plain `nn.Module` on pods
#
# No Lightning needed: a plain PyTorch module whose `forward(inputs, labels=None)` returns a dict with
# `loss` (and `outputs`) is wrapped by the SDK's adapter, with an optimizer from the task's
# hyperparameters. The constructor gets `input_size` and `n_classes` from the pod's table.
#
# This one trains with plain FedAvg: each pod's metrics come back in clear, so you see a curve per pod.
# The tutorial's pod owners allow that (`privacy.require_secure_aggregation = false`); by default a pod
# refuses a train task that is not securely aggregated. See `custom_model_tutorial.py` for the full tour.

# %%
# %%writefile tabular_net.py
from torch import nn
from torch.nn import functional as F


class TabularNet(nn.Module):
    def __init__(self, input_size, n_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_size, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, n_classes))

    def forward(self, inputs, labels=None):
        outputs = self.body(inputs)
        out = {"outputs": outputs}
        if labels is not None:
            out["loss"] = F.cross_entropy(outputs, labels)
        return out


# %%
import contextlib
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from pod_agent.demo import tutorial_federation
from pod_agent.modeller import FedAvg, FedAvgPlan, ModellerClient
from pod_agent.protocol import DataSelection, model_from_file

WORK = Path(tempfile.mkdtemp(prefix="pod-agent-module-"))
model = model_from_file(Path("tabular_net.py"), style="module", class_name="TabularNet", name="tabular-net")

session = contextlib.AsyncExitStack()
federation = await session.enter_async_context(tutorial_federation(WORK / "federation"))
client = await session.enter_async_context(
    ModellerClient(federation.hub_url, federation.modeller, pod_keys=federation.pod_keys)
)

# %%
plan = FedAvgPlan(
    model=model, pods=federation.pods, selection=DataSelection(target="TARGET", categorical_encoding="hashed"),
    rounds=2, epochs_per_round=1, batch_size=128, learning_rate=5e-3, secure=None,
)
result = await FedAvg(client, plan, work_dir=WORK / "rounds").run()
print(result.report.table())

# %%
for pod in federation.pods:
    points = [(r.round, r.pods[pod].accuracy) for r in result.report.rounds if pod in r.pods]
    plt.plot(*zip(*points, strict=True), marker="o", label=pod)
plt.xlabel("round")
plt.ylabel("test accuracy")
plt.legend()
plt.show()

# %%
await session.aclose()
