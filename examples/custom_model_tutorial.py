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
# # Train your own model on pods: the custom-model tutorial
#
# A pod holds a table that may not leave its host. You, the modeller, write a model; the pods train it
# on their rows, inside a sandbox, and send back only updates that are securely aggregated: the hub
# and you see the sum over pods, never one pod's update.
#
# This notebook runs top to bottom on one machine:
#
# 1. define a model (a Lightning module, the SDK's `PodModel`),
# 2. fit it locally on a census table, exactly as a pod would train it,
# 3. start a local federation: a hub and three pods, each holding one share of the census table,
# 4. train the model on the pods with secure federated averaging,
# 5. evaluate it on the pods' test rows and plot the curves.
#
# Open it with `jupyter lab examples/custom_model_tutorial.py` (jupytext) or run it as a notebook:
# `jupytext --to ipynb examples/custom_model_tutorial.py`.

# %%
import contextlib
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from pod_agent.config import DatasourceSection
from pod_agent.demo import tutorial_federation
from pod_agent.modeller import FedAvg, FedAvgPlan, ModellerClient, SecureSettings
from pod_agent.protocol import DataSelection, Hyperparameters, model_from_file
from pod_agent.training import fit_local

WORK = Path(tempfile.mkdtemp(prefix="pod-agent-tutorial-"))
TARGET = "TARGET"  # the census column to predict: income above 50K

# %% [markdown]
# ## 1. The model
#
# A model is Python source that the pods import inside their sandbox, so it lives in a file of its own
# (here written by the cell below). `create_model` builds the network from `self.datastructure`, which
# the pod fills in from its table (`input_size` after encoding, `n_classes` of the target). A batch is
# `(x, y)` with `x = (tabular, support)`.

# %%
# %%writefile census_model.py
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional import accuracy

from pod_agent.sdk import PodClassifierMixin, PodModel


class MyCustomModel(PodClassifierMixin, PodModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.learning_rate = 0.001

    def create_model(self):
        self.input_size = self.datastructure.input_size
        return nn.Sequential(
            nn.Linear(self.input_size, 500),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(500, self.n_classes),
        )

    def forward(self, x):
        tabular, _support = x
        return self._model(tabular.float())

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        preds = self(x)
        loss = F.cross_entropy(preds, y)
        acc = accuracy(F.softmax(preds, dim=1), y, task="multiclass", num_classes=self.n_classes)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", acc, prog_bar=True)
        return {"val_loss": loss, "val_acc": acc}

    def test_step(self, batch, batch_idx):
        x, y = batch
        preds = F.softmax(self(x), dim=1)
        return {"predictions": preds, "targets": y}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate)


# %% [markdown]
# `model_from_file` reads that source and pins it by sha256: the pods check the hash before they import it.

# %%
model = model_from_file(Path("census_model.py"), style="lightning", class_name="MyCustomModel", name="census-mlp")
print(model.name, model.class_name, model.sha256[:16])

# %% [markdown]
# ## 2. Start the federation and fit locally first
#
# `tutorial_federation` writes the census table (its first 6,000 rows) split by marital status over three
# pods, and starts a hub and a `pod-agent run` process per pod, sandboxed at the strongest level this host
# offers. In your own set-up the pods run elsewhere and you would only know the hub's URL and the pods'
# keys (which you pin, so that a hostile hub cannot forge results).
#
# Before sending anything, fit the model on a local table with `fit_local`: the same data preparation,
# Trainer settings and checks as a pod, without the sandbox. Here the local table is the census rows the
# pods were cut from.

# %%
session = contextlib.AsyncExitStack()
federation = await session.enter_async_context(tutorial_federation(WORK / "federation"))
print("hub:", federation.hub_url)
print("pods:", federation.pods)

selection = DataSelection(target=TARGET, categorical_encoding="hashed")
local = fit_local(
    model,
    data=DatasourceSection(path=federation.census, force_stypes=federation.force_stypes),
    selection=selection,
    hyperparameters=Hyperparameters(epochs=1, batch_size=128, learning_rate=5e-3),
    accelerator="cpu",
)
print({name: round(value, 4) for name, value in local.metrics.items()})

# %%
steps = [e for e in local.events if e.get("loss") is not None]
plt.plot([e["step"] for e in steps], [e["loss"] for e in steps])
plt.xlabel("step")
plt.ylabel("training loss")
plt.title("local fit")
plt.show()

# %% [markdown]
# ## 3. Train on the pods with secure aggregation
#
# `FedAvg` runs the rounds: each round it uploads the global weights, signs a train task for the cohort,
# collects the pods' masked updates and unmasks only their sum (SecAgg+). Each round's task also evaluates
# the model it starts from, and the last model gets an evaluate task of its own.

# %%
client = await session.enter_async_context(
    ModellerClient(federation.hub_url, federation.modeller, pod_keys=federation.pod_keys)
)
plan = FedAvgPlan(
    model=model, pods=federation.pods, selection=selection, rounds=2, epochs_per_round=1,
    batch_size=128, learning_rate=5e-3, secure=SecureSettings(),
)
fedavg = FedAvg(client, plan, work_dir=WORK / "rounds", on_round=lambda record: print(record.summary()))
result = await fedavg.run()
print(result.report.table())

# %% [markdown]
# ## 4. Evaluate and plot
#
# The run evaluated each global model on the pods' test rows: a round's train task first scores the model
# it starts from (under secure aggregation only the cohort's mean comes back, inside the masked sum), and
# the last model got an evaluate task of its own, which reports each pod's metrics.

# %%
last = result.report.rounds[-1]
for pod, metrics in last.pods.items():
    print(f"{pod:<14} loss {metrics.loss:.4f}  accuracy {metrics.accuracy:.4f}  ({metrics.n_rows} test rows)")
print(f"local fit on the pooled table: validation accuracy {local.metrics['val_acc']:.4f}")

# %%
rounds = result.report.rounds
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
ax_loss.plot([r.round for r in rounds], [r.overall.loss for r in rounds], marker="o")
ax_loss.set(xlabel="round", ylabel="test loss", title="federated model")
ax_acc.plot([r.round for r in rounds], [r.overall.accuracy for r in rounds], marker="o")
ax_acc.set(xlabel="round", ylabel="test accuracy", title="federated model")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Stop the federation
#
# Closing the session stops the pods (SIGTERM) and the hub.

# %%
await session.aclose()
