"""Every kind of broken model ends its task with one fixed, shareable failure code."""

from __future__ import annotations

import pytest
from training_support import TUTORIAL_MODEL, RunTask, make_task, source_ref, spec_ref

HEADER = (
    "import torch\nfrom torch import nn\nfrom torch.nn import functional as F\n"
    "from pod_agent.sdk import PodClassifierMixin, PodModel\n"
)

GOOD_CLASS = '''
class Good(PodClassifierMixin, PodModel):
    def create_model(self):
        return nn.Linear(self.input_size, self.n_classes)
'''

BAD_SOURCES = {
    "syntax_error": ("Broken", HEADER + "class Broken(PodModel)\n    pass\n"),
    "wrong_base_class": ("Plain", HEADER + "class Plain(nn.Module):\n    pass\n"),
    "multiple_model_classes": ("Good", HEADER + GOOD_CLASS + GOOD_CLASS.replace("Good", "Other")),
    "model_class_not_found": ("Missing", HEADER + GOOD_CLASS),
    "model_import_error": ("Good", HEADER + "import a_module_that_does_not_exist\n" + GOOD_CLASS),
    "create_model_wrong_type": (
        "Good",
        HEADER + GOOD_CLASS.replace("nn.Linear(self.input_size, self.n_classes)", "[1, 2]"),
    ),
    "forward_shape_mismatch": ("Good", HEADER + GOOD_CLASS.replace("self.input_size,", "self.input_size + 3,")),
    "non_finite_loss": (
        "Good",
        HEADER + GOOD_CLASS + "    def training_step(self, batch, batch_idx):\n"
        "        x, y = batch\n        return F.cross_entropy(self(x), y) * float('nan')\n",
    ),
    "model_init_error": (
        "Good",
        HEADER
        + GOOD_CLASS
        + "    def __init__(self, **kwargs):\n        super().__init__(**kwargs)\n        raise ValueError('x')\n",
    ),
}


@pytest.mark.parametrize("code", sorted(BAD_SOURCES))
def test_broken_model_source_fails_with_its_code(run_in_process: RunTask, code: str) -> None:
    class_name, source = BAD_SOURCES[code]
    channel = run_in_process(make_task("train", source_ref(source, class_name), steps=3))
    assert channel.failure == code
    assert channel.header is None


def test_a_module_style_class_that_is_a_lightning_model_is_the_wrong_base(run_in_process: RunTask) -> None:
    channel = run_in_process(make_task("train", source_ref(TUTORIAL_MODEL, "MyCustomModel", style="module"), steps=1))
    assert channel.failure == "wrong_base_class"


def test_source_differing_from_its_signed_hash_is_refused(run_in_process: RunTask) -> None:
    ref = source_ref(TUTORIAL_MODEL, "MyCustomModel").model_copy(update={"sha256": "0" * 64})
    assert run_in_process(make_task("train", ref, steps=1)).failure == "source_hash_mismatch"


@pytest.mark.parametrize(
    "spec",
    [
        {"layers": [{"type": "Exec", "code": "print(1)"}]},
        {"layers": [{"type": "Linear", "in_features": "input_size", "out_features": 2, "device": "cuda"}]},
        {"layers": [{"type": "Linear", "in_features": "__import__('os')", "out_features": 2}]},
        {"layers": [{"type": "ReLU"}], "optimizer": "LBFGS"},
        {"layers": [{"type": "ReLU"}], "loss": "KLDiv"},
        {"layers": []},
    ],
    ids=["unknown-layer", "unknown-argument", "code-as-symbol", "optimizer", "loss", "empty"],
)
def test_declarative_spec_outside_the_allow_list_is_refused(run_in_process: RunTask, spec: dict[str, object]) -> None:
    assert run_in_process(make_task("train", spec_ref(spec), steps=1)).failure == "bad_spec"


def test_a_request_with_both_epochs_and_steps_is_refused(run_in_process: RunTask) -> None:
    task = make_task("train", source_ref(TUTORIAL_MODEL, "MyCustomModel"), steps=1)
    raw = task.model_dump(mode="json")
    raw["hyperparameters"]["epochs"] = 1
    channel = run_in_process(task, overrides={"task": raw})
    assert channel.failure == "bad_request"


# More than any address space: the allocation fails at once, as it does at the sandbox's data rlimit.
_HUGE_ALLOCATION = "torch.empty(1 << 60, dtype=torch.uint8)"
OUT_OF_MEMORY_SOURCES = {
    "create_model": HEADER + GOOD_CLASS.replace("return nn.Linear", "raise MemoryError\n        return nn.Linear"),
    "forward": HEADER + GOOD_CLASS + f"    def forward(self, x):\n        {_HUGE_ALLOCATION}\n        return x\n",
    "training_step": HEADER + GOOD_CLASS + "    def training_step(self, batch, batch_idx):\n"
    f"        {_HUGE_ALLOCATION}\n        x, y = batch\n        return F.cross_entropy(self(x), y)\n",
}


@pytest.mark.parametrize("where", sorted(OUT_OF_MEMORY_SOURCES))
def test_running_out_of_memory_anywhere_is_memory_exceeded_not_the_wrapping_stage(run_in_process: RunTask,
                                                                                  where: str) -> None:
    channel = run_in_process(make_task("train", source_ref(OUT_OF_MEMORY_SOURCES[where], "Good"), steps=3))
    assert channel.failure == "memory_exceeded"


def test_a_request_that_does_not_parse_is_a_bad_request(run_in_process: RunTask) -> None:
    task = make_task("train", source_ref(TUTORIAL_MODEL, "MyCustomModel"), steps=1)
    channel = run_in_process(task, overrides={"privacy": {"min_rows": "20"}})
    assert channel.failure == "bad_request"
    channel = run_in_process(task, overrides={"schema": {}})
    assert channel.failure == "bad_request"
