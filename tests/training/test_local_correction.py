"""FedProx's proximal term and SCAFFOLD's correction are the pod's: its engine applies them to a model
whose code never mentions either, and the weights equal a numpy reference of the same SGD steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from training_support import source_ref

from pod_agent.errors import TrainingError
from pod_agent.protocol.messages import DataSelection, Hyperparameters
from pod_agent.training.local import fit_local

# The loss is linear in the weights (gradient G per weight, data-independent), so K steps of plain SGD have a
# closed reference; training_step knows nothing of mu or control variates.
OBLIVIOUS_MODEL = '''
import torch
from torch import nn
from pod_agent.sdk import PodClassifierMixin, PodModel


class Oblivious(PodClassifierMixin, PodModel):
    def create_model(self):
        return nn.Linear(self.datastructure.input_size, 2)

    def forward(self, x):
        tabular, _ = x
        return self._model(tabular.float())

    def training_step(self, batch, batch_idx):
        return 0.5 * self._model.weight.sum() - 0.25 * self._model.bias.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)
'''
GRADIENT = {"_model.weight": 0.5, "_model.bias": -0.25}
STEPS, LR = 6, 0.1


def _reference(
    start: dict[str, np.ndarray], *, mu: float, correction: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """K SGD steps on loss + mu/2 ||w - w0||^2 with SCAFFOLD's constant correction added to the gradient."""
    out = {}
    for name, w0 in start.items():
        w = w0.astype(np.float64).copy()
        for _ in range(STEPS):
            grad = GRADIENT[name] + mu * (w - w0) + (0.0 if correction is None else correction[name])
            w = w - LR * grad
        out[name] = w
    return out


def _fit(small_adult: Path, start: Path | None, **kwargs: object) -> dict[str, np.ndarray]:
    fit = fit_local(
        source_ref(OBLIVIOUS_MODEL, "Oblivious"), data=small_adult, selection=DataSelection(target="TARGET"),
        hyperparameters=Hyperparameters(steps=STEPS, learning_rate=LR, seed=3), weights=start, accelerator="cpu",
        **kwargs,  # type: ignore[arg-type]
    )
    return {name: t.numpy() for name, t in fit.weights.items()}


@pytest.fixture(scope="module")
def start(small_adult: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Starting weights away from the model's own initialisation, as a global model would be."""
    rng = np.random.default_rng(0)
    first = _fit(small_adult, None)
    weights = {name: rng.normal(size=a.shape).astype(np.float32) for name, a in first.items()}
    path = tmp_path_factory.mktemp("start") / "start.safetensors"
    save_file(weights, str(path))
    return path, weights


def test_the_pods_engine_adds_the_proximal_gradient_to_a_model_that_ignores_mu(
    small_adult: Path, start: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, weights = start
    plain = _fit(small_adult, path)
    proximal = _fit(small_adult, path, proximal_mu=0.8)
    for name in weights:
        np.testing.assert_allclose(plain[name], _reference(weights, mu=0.0, correction=None)[name], atol=1e-5)
        np.testing.assert_allclose(proximal[name], _reference(weights, mu=0.8, correction=None)[name], atol=1e-5)
        # The term pulls towards the start: the proximal run moved less.
        assert np.abs(proximal[name] - weights[name]).max() < np.abs(plain[name] - weights[name]).max()


def test_the_pods_engine_adds_scaffolds_correction_to_every_gradient(
    small_adult: Path, start: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, weights = start
    rng = np.random.default_rng(1)
    correction = {name: rng.normal(size=a.shape).astype(np.float32) for name, a in weights.items()}
    corrected = _fit(small_adult, path, correction=correction, proximal_mu=0.3)
    expected = _reference(weights, mu=0.3, correction=correction)
    for name in weights:
        np.testing.assert_allclose(corrected[name], expected[name], atol=1e-5)


def test_a_correction_whose_shapes_differ_from_the_parameters_fails_the_task(
    small_adult: Path, start: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, weights = start
    bad = {name: np.zeros((1, *a.shape), np.float32) for name, a in weights.items()}
    with pytest.raises(TrainingError, match="SCAFFOLD correction's shapes differ"):
        _fit(small_adult, path, correction=bad)


def test_scaffold_with_a_model_that_steps_with_adam_fails_the_task(
    small_adult: Path, start: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, weights = start
    adam = OBLIVIOUS_MODEL.replace("torch.optim.SGD", "torch.optim.AdamW")
    with pytest.raises(TrainingError, match="SCAFFOLD needs the model to step with torch.optim.SGD, not AdamW"):
        fit_local(
            source_ref(adam, "Oblivious"), data=small_adult, selection=DataSelection(target="TARGET"),
            hyperparameters=Hyperparameters(steps=STEPS, learning_rate=LR, seed=3), weights=path, accelerator="cpu",
            correction={name: np.zeros_like(a) for name, a in weights.items()},
        )
