"""What train, evaluate and predict hand back: updates, weights, buffers, metrics, predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy
from training_support import MODULE_STYLE_MODEL, TUTORIAL_MODEL, RunTask, make_task, source_ref

from pod_agent.data.task_input import TaskInput
from pod_agent.training import check_result, expected_from_safetensors, reported_rows

TUTORIAL = source_ref(TUTORIAL_MODEL, "MyCustomModel")
MODULE = source_ref(MODULE_STYLE_MODEL, "TabularNet", style="module")


def _weights(run: RunTask, model: object, **hyper: object) -> dict[str, np.ndarray]:
    channel = run(make_task("train", model, returns="weights", **hyper))  # type: ignore[arg-type]
    assert channel.failure is None
    return load_numpy(channel.payload)


def test_update_is_new_weights_minus_pretrained_weights(run_in_process: RunTask) -> None:
    start = _weights(run_in_process, TUTORIAL, steps=2)
    blob = save_numpy(start)
    as_update = run_in_process(make_task("train", TUTORIAL, weights=blob, steps=5), weights=blob)
    as_weights = run_in_process(make_task("train", TUTORIAL, weights=blob, steps=5, returns="weights"), weights=blob)
    update, new = load_numpy(as_update.payload), load_numpy(as_weights.payload)
    assert update.keys() == new.keys() == start.keys()
    for name in start:
        np.testing.assert_allclose(start[name] + update[name], new[name], atol=1e-6)
    assert any(np.abs(u).max() > 0 for u in update.values())


def test_pretrained_weights_round_trip_through_evaluate(run_in_process: RunTask) -> None:
    trained = _weights(run_in_process, TUTORIAL, steps=20)
    blob = save_numpy(trained)
    first = run_in_process(make_task("evaluate", TUTORIAL, weights=blob), weights=blob)
    again = run_in_process(make_task("evaluate", TUTORIAL, weights=blob), weights=blob)
    assert first.header is not None and again.header is not None
    assert first.header["metrics"] == again.header["metrics"]
    assert first.header["tensors"] == {} and first.payload == b""


def test_pretrained_weights_with_wrong_names_or_shapes_are_refused(run_in_process: RunTask) -> None:
    trained = _weights(run_in_process, TUTORIAL, steps=1)
    renamed = {("x" + k if k.endswith("0.bias") else k): v for k, v in trained.items()}
    reshaped = dict(trained, **{"_model.3.bias": np.zeros(7, dtype=np.float32)})
    for bad in (renamed, reshaped):
        blob = save_numpy(bad)
        assert run_in_process(make_task("evaluate", TUTORIAL, weights=blob), weights=blob).failure == "weights_mismatch"


def test_weights_whose_hash_differs_from_the_task_are_refused(run_in_process: RunTask) -> None:
    blob = save_numpy(_weights(run_in_process, TUTORIAL, steps=1))
    task = make_task("evaluate", TUTORIAL, weights=b"other bytes")
    assert run_in_process(task, weights=blob).failure == "weights_hash_mismatch"


def test_integer_buffers_stay_home_and_float_buffers_travel(run_in_process: RunTask) -> None:
    sent = _weights(run_in_process, MODULE, steps=3)
    assert "_model.body.1.running_mean" in sent and "_model.body.1.running_var" in sent
    assert not any(name.endswith("num_batches_tracked") for name in sent)
    assert all(a.dtype == np.float32 for a in sent.values())


def test_same_seed_gives_the_same_update(run_in_process: RunTask) -> None:
    one, two = _weights(run_in_process, TUTORIAL, steps=5), _weights(run_in_process, TUTORIAL, steps=5)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])


def test_evaluate_returns_only_scalar_metrics(run_in_process: RunTask, adult_input: TaskInput) -> None:
    channel = run_in_process(make_task("evaluate", TUTORIAL))
    assert channel.header is not None
    task = make_task("evaluate", TUTORIAL)
    rows = reported_rows(task, adult_input.datastructure["n_rows"])  # type: ignore[arg-type]
    checked = check_result(_Outcome(channel.header, channel.payload), task=task, expected=None, rows=rows,
                           max_bytes=1 << 20)
    assert {"val_loss", "val_acc", "test_accuracy"} <= set(checked.metrics)
    assert checked.arrays == {}


def test_predict_returns_class_probabilities_for_the_test_rows_only(
    run_in_process: RunTask, adult_input: TaskInput
) -> None:
    task = make_task("predict", TUTORIAL)
    channel = run_in_process(task)
    assert channel.header is not None
    n_test = adult_input.datastructure["n_rows"]["test"]  # type: ignore[index]
    checked = check_result(_Outcome(channel.header, channel.payload), task=task, expected=None, rows=n_test,
                           max_bytes=1 << 20, min_rows=20)
    predictions = checked.arrays["predictions"]
    assert predictions.shape == (n_test, 2)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, atol=1e-5)


def test_predict_under_min_rows_is_refused(run_in_process: RunTask) -> None:
    assert run_in_process(make_task("predict", TUTORIAL), min_rows=10**6).failure == "too_few_rows"


def test_train_result_matches_the_models_own_parameters(run_in_process: RunTask, adult_input: TaskInput) -> None:
    channel = run_in_process(make_task("train", TUTORIAL, steps=2))
    start = _weights(run_in_process, TUTORIAL, steps=1)
    expected = expected_from_safetensors(save_numpy(start))
    assert channel.header is not None
    n_train = adult_input.datastructure["n_rows"]["train"]  # type: ignore[index]
    checked = check_result(
        _Outcome(channel.header, channel.payload), task=make_task("train", TUTORIAL), expected=expected, rows=n_train,
        max_bytes=64 << 20,
    )
    assert checked.n_rows == n_train > 0


class _Outcome:
    def __init__(self, header: dict[str, object], payload: bytes) -> None:
        self.header, self.payload = header, payload


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_gpu_matches_the_cpu_result_shape(run_in_process: RunTask) -> None:
    task = make_task("train", TUTORIAL, steps=20, returns="weights")
    gpu = run_in_process(task, overrides={"trainer": {"accelerator": "gpu", "devices": 1}})
    cpu = run_in_process(task)
    assert gpu.failure is None and gpu.header is not None and cpu.header is not None
    assert gpu.header["tensors"] == cpu.header["tensors"]
    assert np.isfinite(gpu.header["metrics"]["val_loss"])


def test_a_train_task_that_evaluates_first_reports_the_incoming_weights_test_metrics(run_in_process: RunTask) -> None:
    blob = save_numpy(_weights(run_in_process, TUTORIAL, steps=3))
    evaluated = run_in_process(make_task("evaluate", TUTORIAL, weights=blob), weights=blob)
    task = make_task("train", TUTORIAL, weights=blob, steps=5).model_copy(update={"evaluate_first": True})
    trained = run_in_process(task, weights=blob)
    plain = run_in_process(make_task("train", TUTORIAL, weights=blob, steps=5), weights=blob)
    assert evaluated.header is not None and trained.header is not None and plain.header is not None
    test_metrics = {k: v for k, v in evaluated.header["metrics"].items() if k.startswith("test_")}
    assert test_metrics and {k: trained.header["metrics"][k] for k in test_metrics} == test_metrics
    assert not any(k.startswith("test_") for k in plain.header["metrics"])
    # Evaluating first leaves the update as it was.
    assert trained.payload == plain.payload


# Batch norm's running statistics change as it trains; the first layer is frozen (a base the task keeps).
BATCHNORM_MODEL = '''
from torch import nn

from pod_agent.sdk import PodClassifierMixin, PodModel


class NormNet(PodClassifierMixin, PodModel):
    def create_model(self):
        net = nn.Sequential(nn.Linear(self.datastructure.input_size, 32), nn.BatchNorm1d(32), nn.ReLU(),
                            nn.Linear(32, self.n_classes))
        net[0].requires_grad_(False)
        return net

    def forward(self, x):
        tabular, _support = x
        return self._model(tabular.float())
'''
# The same network, but its training step writes into the frozen layer (through the parameter, as torch sees it).
MUTATING_MODEL = BATCHNORM_MODEL.replace("from torch import nn", "import torch\nfrom torch import nn") + '''

class Mutating(NormNet):
    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self._model[0].weight.mul_(0.5)
        return super().training_step(batch, batch_idx)
'''


def test_evaluating_first_measures_the_starting_state_even_where_training_changes_buffers(
    run_in_process: RunTask,
) -> None:
    model = source_ref(BATCHNORM_MODEL, "NormNet")
    blob = save_numpy(_weights(run_in_process, model, steps=3))
    evaluated = run_in_process(make_task("evaluate", model, weights=blob), weights=blob)
    plain_task = make_task("train", model, weights=blob, steps=5, returns="weights")
    trained = run_in_process(plain_task.model_copy(update={"evaluate_first": True}), weights=blob)
    plain = run_in_process(plain_task, weights=blob)
    assert evaluated.header is not None and trained.header is not None
    test_metrics = {k: v for k, v in evaluated.header["metrics"].items() if k.startswith("test_")}
    assert test_metrics and {k: trained.header["metrics"][k] for k in test_metrics} == test_metrics
    # The trained weights (running statistics included) leave as they were trained, not as put back.
    assert trained.payload == plain.payload
    assert not np.array_equal(load_numpy(trained.payload)["_model.1.running_mean"],
                              load_numpy(blob)["_model.1.running_mean"])


def test_a_frozen_parameter_changed_in_place_fails_the_incoming_evaluation(run_in_process: RunTask) -> None:
    model = source_ref(MUTATING_MODEL, "Mutating")
    blob = save_numpy(_weights(run_in_process, source_ref(BATCHNORM_MODEL, "NormNet"), steps=1))
    task = make_task("train", model, weights=blob, steps=2).model_copy(update={"evaluate_first": True})
    assert run_in_process(task, weights=blob).failure == "evaluation_error"
    assert run_in_process(make_task("train", model, weights=blob, steps=2), weights=blob).failure is None
