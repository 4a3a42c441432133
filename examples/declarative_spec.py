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
# # A declarative spec on pods
#
# A spec is JSON, not code: allow-listed layers, an optimizer and a loss. The pod builds it without
# running any of your code, so an owner can let a *general* modeller train specs
# (`allow_declarative_models`) without reviewing source. `"input_size"` and `"n_classes"` are filled in
# from the pod's table. It trains here with secure aggregation, as pods require by default.

# %%
import contextlib
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from pod_agent.demo import tutorial_federation
from pod_agent.modeller import FedAvg, FedAvgPlan, ModellerClient, SecureSettings
from pod_agent.protocol import DataSelection, model_from_file

spec = {
    "layers": [
        {"type": "Linear", "in_features": "input_size", "out_features": 32},
        {"type": "GELU"},
        {"type": "Dropout", "p": 0.1},
        {"type": "Linear", "in_features": 32, "out_features": "n_classes"},
    ],
    "optimizer": "Adam",
    "loss": "CrossEntropy",
    "learning_rate": 0.003,
}
WORK = Path(tempfile.mkdtemp(prefix="pod-agent-spec-"))
(WORK / "census_spec.json").write_text(json.dumps(spec, indent=2))
model = model_from_file(WORK / "census_spec.json", style="declarative", class_name=None, name="census-spec")
print(model.name, model.sha256[:16])

# %%
session = contextlib.AsyncExitStack()
federation = await session.enter_async_context(tutorial_federation(WORK / "federation"))
client = await session.enter_async_context(
    ModellerClient(federation.hub_url, federation.modeller, pod_keys=federation.pod_keys)
)
plan = FedAvgPlan(
    model=model, pods=federation.pods, selection=DataSelection(target="TARGET", categorical_encoding="hashed"),
    rounds=2, epochs_per_round=1, batch_size=128, secure=SecureSettings(),
)
result = await FedAvg(client, plan, work_dir=WORK / "rounds").run()
print(result.report.table())

# %%
rounds = result.report.rounds
plt.plot([r.round for r in rounds], [r.overall.accuracy for r in rounds], marker="o")
plt.xlabel("round")
plt.ylabel("test accuracy (all pods)")
plt.show()

# %%
await session.aclose()
