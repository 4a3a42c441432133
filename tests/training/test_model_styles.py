"""Each model style trains on Adult inside the worker and beats its initial validation loss."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy
from training_support import (
    DECLARATIVE_SPEC,
    MODULE_STYLE_MODEL,
    TUTORIAL_MODEL,
    RunTask,
    make_task,
    source_ref,
    spec_ref,
)

from pod_agent.protocol.messages import ModelRef

STYLES = {
    "lightning": source_ref(TUTORIAL_MODEL, "MyCustomModel"),
    "module": source_ref(MODULE_STYLE_MODEL, "TabularNet", style="module"),
    "declarative": spec_ref(DECLARATIVE_SPEC),
}


def _train(run: RunTask, model: ModelRef, **hyper: object) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    channel = run(make_task("train", model, returns="weights", **hyper))
    assert channel.failure is None
    assert channel.header is not None
    return load_numpy(channel.payload), channel.header["metrics"]


def _evaluate(run: RunTask, model: ModelRef, weights: dict[str, np.ndarray] | None) -> dict[str, float]:
    blob = None if weights is None else save_numpy(weights)
    channel = run(make_task("evaluate", model, weights=blob), weights=blob)
    assert channel.failure is None
    assert channel.header is not None
    return channel.header["metrics"]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_style_improves_validation_loss_on_adult(run_in_process: RunTask, style: str) -> None:
    model = STYLES[style]
    initial = _evaluate(run_in_process, model, None)["val_loss"]
    weights, metrics = _train(run_in_process, model, epochs=2)
    assert metrics["val_loss"] < initial
    after = _evaluate(run_in_process, model, weights)
    assert after["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-4)
    assert 0.5 < after["test_accuracy"] <= 1.0
