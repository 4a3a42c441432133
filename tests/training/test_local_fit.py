"""Local fit trains like a pod: same preparation, same engine, same weights; and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as load_numpy
from safetensors.numpy import load_file
from safetensors.numpy import save as save_numpy
from training_support import DECLARATIVE_SPEC, TUTORIAL_MODEL, RunTask, make_task, source_ref, spec_ref

from pod_agent.cli.app import main
from pod_agent.config.settings import DatasourceSection
from pod_agent.data import open_datasource
from pod_agent.data.task_input import plan_datastructure
from pod_agent.errors import TrainingError
from pod_agent.protocol.messages import DataSelection, Hyperparameters
from pod_agent.training.local import fit_local, initial_weights


def test_local_fit_gives_the_weights_a_pod_computes_on_the_same_data(
    run_in_process: RunTask, small_adult: Path
) -> None:
    model = source_ref(TUTORIAL_MODEL, "MyCustomModel")
    pod = run_in_process(make_task("train", model, returns="weights", steps=15, seed=7))
    local = fit_local(model, data=small_adult, selection=DataSelection(target="TARGET"),
                      hyperparameters=Hyperparameters(steps=15, seed=7, batch_size=64), accelerator="cpu")
    from_pod = load_numpy(pod.payload)
    assert from_pod.keys() == local.weights.keys()
    for name, value in from_pod.items():
        np.testing.assert_allclose(local.weights[name].numpy(), value, atol=1e-5)
    assert local.metrics["val_loss"] == pytest.approx(pod.header["metrics"]["val_loss"], rel=1e-4)  # type: ignore[index]
    assert local.events[0]["stage"] == "training"


def test_local_fit_reports_a_broken_model_with_the_pods_failure_code(small_adult: Path) -> None:
    model = source_ref(
        "from pod_agent.sdk import PodModel\nclass A(PodModel):\n    def create_model(self):\n        return 3\n", "A"
    )
    with pytest.raises(TrainingError) as failed:
        fit_local(
            model, data=small_adult, selection=DataSelection(target="TARGET"), hyperparameters=Hyperparameters(steps=1)
        )
    assert failed.value.code == "create_model_wrong_type"


def test_fit_local_command_trains_and_writes_weights(
    small_adult: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(DECLARATIVE_SPEC))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["modeller", "fit-local", str(spec), "--style", "declarative", "--data", str(small_adult),
              "--target", "TARGET", "--steps", "10", "--accelerator", "cpu", "--out", str(out)])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "trained on" in printed and "val_loss" in printed
    weights = load_file(str(out / "model.safetensors"))
    assert weights["_model.0.weight"].shape[0] == 32
    assert json.loads((out / "metrics.json").read_text())["n_rows"] > 0


def test_fit_local_command_refuses_epochs_with_steps(
    small_adult: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "m.py"
    source.write_text(TUTORIAL_MODEL)
    with pytest.raises(SystemExit) as exited:
        main(["modeller", "fit-local", str(source), "--class", "MyCustomModel", "--data", str(small_adult),
              "--target", "TARGET", "--steps", "1", "--epochs", "1"])
    assert exited.value.code == 2
    assert "give --epochs or --steps, not both" in capsys.readouterr().err


def test_hashed_encoding_gives_a_width_independent_of_the_categories(small_adult: Path) -> None:
    selection = DataSelection(target="TARGET", categorical_encoding="hashed")
    model = source_ref(TUTORIAL_MODEL, "MyCustomModel")
    fit = fit_local(
        model, data=small_adult, selection=selection, hyperparameters=Hyperparameters(steps=2), accelerator="cpu"
    )
    stypes = fit.datastructure["stypes"]
    assert isinstance(stypes, dict)
    n_categorical = sum(1 for name, stype in stypes.items() if stype == "categorical" and name != "TARGET")
    n_continuous = sum(1 for stype in stypes.values() if stype == "continuous")
    assert fit.datastructure["input_size"] == 64 * n_categorical + n_continuous
    assert fit.weights["_model.0.weight"].shape[1] == fit.datastructure["input_size"]


@pytest.mark.parametrize("style", ["lightning", "declarative"])
def test_initial_weights_are_what_a_pod_starts_from(run_in_process: RunTask, small_adult: Path, style: str) -> None:
    model = source_ref(TUTORIAL_MODEL, "MyCustomModel") if style == "lightning" else spec_ref(DECLARATIVE_SPEC)
    schema = open_datasource(DatasourceSection(path=small_adult)).schema()
    planned = plan_datastructure(schema, DataSelection(target="TARGET"), share_categories=False)
    initial = initial_weights(model, datastructure=planned, hyperparameters=Hyperparameters(seed=7))
    blob = save_numpy(initial)
    fresh = run_in_process(make_task("evaluate", model))
    loaded = run_in_process(make_task("evaluate", model, weights=blob), weights=blob)
    assert fresh.header is not None and loaded.header is not None
    assert fresh.header["metrics"] == loaded.header["metrics"]
    trained = run_in_process(make_task("train", model, steps=3, returns="weights"))
    assert load_numpy(trained.payload).keys() == initial.keys()
