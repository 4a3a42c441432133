"""The SDK's public surface and its hooks, on synthetic tensors (no sandbox, no data files)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pod_agent.sdk as sdk
from pod_agent.errors import TrainingError
from pod_agent.sdk import Datastructure, DeclarativeModel, ModelSpec, ModuleAdapter, PodClassifierMixin, PodModel

DS = {"target": "t", "input_size": 6, "n_classes": 3, "target_categories": ["a", "b", "c"], "n_rows": {"train": 10}}


def _batch(n: int = 8) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    return (torch.randn(n, 6), torch.empty(n, 0)), torch.randint(0, 3, (n,))


def test_sdk_public_names_are_pinned() -> None:
    assert sorted(sdk.__all__) == [
        "Batch", "Datastructure", "DeclarativeModel", "LAYERS", "LOSSES", "LayerSpec", "ModelSpec", "ModuleAdapter",
        "OPTIMIZERS", "PodClassifierMixin", "PodModel",
    ]


def test_allow_lists_hold_exactly_the_documented_names() -> None:
    assert sorted(sdk.OPTIMIZERS) == ["Adadelta", "Adam", "AdamW", "SGD"]
    assert sorted(sdk.LOSSES) == ["BCEWithLogits", "CrossEntropy", "MSE", "NLL"]
    assert sorted(sdk.LAYERS) == sorted([
        "Linear", "Conv1d", "Conv2d", "ReLU", "GELU", "Dropout", "BatchNorm1d", "BatchNorm2d", "LayerNorm",
        "Flatten", "MaxPool1d", "MaxPool2d", "Embedding", "LogSoftmax", "Softmax",
    ])


class Ported(PodClassifierMixin, PodModel):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.learning_rate = 0.01

    def create_model(self) -> nn.Module:
        self.input_size = self.datastructure.input_size
        return nn.Sequential(nn.Linear(self.input_size, 4), nn.ReLU(), nn.Linear(4, self.n_classes))


def test_a_ported_model_sees_the_datastructure_and_builds_its_network() -> None:
    model = Ported(datastructure=DS, schema={"columns": []}, epochs=2)
    model.initialise_model()
    assert model.n_classes == 3 and model.input_size == 6 and model.epochs == 2
    assert isinstance(model._model, nn.Sequential)
    assert model((torch.randn(5, 6), torch.empty(5, 0))).shape == (5, 3)
    assert model.preds == [] and model.targs == []
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 0.01


def test_classifier_mixin_steps_return_loss_and_predictions() -> None:
    model = Ported(datastructure=DS)
    model.initialise_model()
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    loss = model.training_step(_batch(), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    out = model.test_step(_batch(), 0)
    assert out["predictions"].shape == (8, 3) and out["targets"].shape == (8,)
    torch.testing.assert_close(out["predictions"].sum(dim=1), torch.ones(8))


def test_create_model_must_return_a_module() -> None:
    class Wrong(PodModel):
        def create_model(self) -> nn.Module:
            return "not a module"  # type: ignore[return-value]

    with pytest.raises(TrainingError, match="not a torch.nn.Module") as failed:
        Wrong(datastructure=DS).initialise_model()
    assert failed.value.code == "create_model_wrong_type"


def test_a_bad_datastructure_is_named() -> None:
    with pytest.raises(TrainingError, match="datastructure unusable") as failed:
        Datastructure.from_dict({"target": "t", "input_size": 0, "n_classes": 2})
    assert failed.value.code == "bad_datastructure"


class DictNet(nn.Module):
    def __init__(self, input_size: int, n_classes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(input_size, n_classes)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outputs = self.layer(inputs)
        out = {"outputs": outputs}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(outputs, labels)
        return out


def test_module_adapter_builds_the_module_from_the_datastructure_and_uses_its_loss() -> None:
    model = ModuleAdapter(module_class=DictNet, datastructure=DS, learning_rate=0.5, optimizer="SGD")
    model.initialise_model()
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    assert model.training_step(_batch(), 0).ndim == 0
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.5


def test_module_adapter_refuses_an_optimizer_outside_the_allow_list() -> None:
    model = ModuleAdapter(module_class=DictNet, datastructure=DS, optimizer="LBFGS")
    model.initialise_model()
    with pytest.raises(TrainingError, match="optimizer 'LBFGS' is not allowed"):
        model.configure_optimizers()


SPEC = {
    "layers": [
        {"type": "Linear", "in_features": "input_size", "out_features": 8},
        {"type": "BatchNorm1d", "num_features": 8},
        {"type": "ReLU"},
        {"type": "Linear", "in_features": 8, "out_features": "n_classes"},
    ],
    "optimizer": "SGD",
    "loss": "CrossEntropy",
}


def test_a_declarative_spec_builds_a_sequential_with_symbols_resolved() -> None:
    built = ModelSpec.parse(SPEC).build(input_size=6, n_classes=3)
    assert [type(m).__name__ for m in built] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert built[0].in_features == 6 and built[3].out_features == 3


@pytest.mark.parametrize(
    ("loss", "out_features"), [("CrossEntropy", "n_classes"), ("MSE", "n_classes"), ("BCEWithLogits", "n_classes")]
)
def test_declarative_losses_shape_the_targets(loss: str, out_features: str) -> None:
    spec = {"layers": [{"type": "Linear", "in_features": "input_size", "out_features": out_features}], "loss": loss}
    model = DeclarativeModel(spec=spec, datastructure=DS)
    model.initialise_model()
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    assert torch.isfinite(model.training_step(_batch(), 0))


def test_nll_with_log_softmax_predicts_probabilities() -> None:
    spec = {"layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"},
                       {"type": "LogSoftmax", "dim": 1}], "loss": "NLL"}
    model = DeclarativeModel(spec=spec, datastructure=DS)
    model.initialise_model()
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    out = model.test_step(_batch(), 0)
    torch.testing.assert_close(out["predictions"].sum(dim=1), torch.ones(8))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"layers": [{"type": "Lambda"}]}, "type 'Lambda' is not allowed"),
        (
            {"layers": [{"type": "Linear", "in_features": 2, "out_features": 2, "dtype": "x"}]},
            "argument 'dtype' is not allowed",
        ),
        ({"layers": [{"type": "Dropout", "p": "0.1"}]}, "strings may only be"),
        ({"layers": [{"type": "ReLU"}], "code": "x"}, "unknown spec keys"),
        ({"layers": [{"type": "ReLU"}], "learning_rate": -1}, "must be a positive number"),
        ({"layers": [{"type": "Linear", "in_features": -1, "out_features": 2}]}, "rejects its arguments"),
        ([1, 2], "must be an object"),
    ],
)
def test_specs_outside_the_allow_list_are_refused_with_the_reason(spec: object, message: str) -> None:
    with pytest.raises(TrainingError, match=message) as failed:
        ModelSpec.parse(spec).build(input_size=4, n_classes=2)
    assert failed.value.code == "bad_spec"
