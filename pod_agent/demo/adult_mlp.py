"""The demo's custom model: what a modeller would write and send (style A, a PodModel).

Shipped as source text: the demo reads this file and signs its text into the task;
pods import it only inside their sandbox. The classifier mixin supplies the
cross-entropy steps and logs ``*_loss`` and ``*_accuracy``.
"""

from typing import Any

import torch
from torch import nn

from pod_agent.sdk import PodClassifierMixin, PodModel


class AdultMLP(PodClassifierMixin, PodModel):
    """Two hidden layers over the encoded census features; predicts income > 50K."""

    def create_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(self.datastructure.input_size, 64),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, self.n_classes),
        )

    def forward(self, x: Any) -> Any:
        tabular, support = x
        return super().forward((tabular.float(), support))


class AdultMLPSGD(AdultMLP):
    """The same network stepped by plain SGD: what SCAFFOLD's control variates assume of the pods' steps."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)
