"""Failure codes: the hub sees only words of the agent's own enums, whatever the sandbox reported."""

from __future__ import annotations

import re

import pytest

from pod_agent.errors import CodedError, ContractViolation, SandboxError, TaskFailed, TaskRefused, TrainingError
from pod_agent.policy import FailureCode, RefusalCode, failure_code_for, verifier
from pod_agent.policy.codes import WORKER_FAILED


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (SandboxError(WORKER_FAILED, "diagnosis_hiv"), "model_error"),  # a word made up inside the sandbox
        (SandboxError(WORKER_FAILED, "sandbox_unavailable"), "model_error"),  # an agent-decided code, claimed
        (SandboxError(WORKER_FAILED, "internal_error"), "model_error"),
        (SandboxError(WORKER_FAILED, "syntax_error"), "syntax_error"),
        (SandboxError(WORKER_FAILED, "model_import_error"), "import_error"),
        (SandboxError(WORKER_FAILED, "memory_exceeded"), "memory_exceeded"),
        (SandboxError("memory_exceeded", "cgroup OOM"), "memory_exceeded"),
        (SandboxError("wall_timeout"), "time_exceeded"),
        (SandboxError("cpu_time_exceeded"), "time_exceeded"),
        (SandboxError("output_exceeded"), "output_too_large"),
        (SandboxError("frame_too_large"), "output_too_large"),
        (SandboxError("launch_failed"), "sandbox_error"),
        (ContractViolation("tensor_names", "unexpected ['rows']"), "result_rejected"),
        (ContractViolation("too_large"), "output_too_large"),
        (TrainingError("non_finite_loss"), "non_finite_loss"),
        (TrainingError("whatever_the_model_said"), "model_error"),
        (TaskFailed("too_few_rows"), "too_few_rows"),
        (TaskRefused("schema_mismatch", "x"), "schema_mismatch"),
        (TaskRefused("not_a_refusal_code", "x"), "internal_error"),
    ],
)
def test_every_error_leaves_as_a_word_of_the_agents_enums(error: CodedError, code: str) -> None:
    assert failure_code_for(error) == code
    assert code in {c.value for c in FailureCode} | {c.value for c in RefusalCode}


def test_detail_never_becomes_the_code() -> None:
    error = SandboxError("launch_failed", "row 17: age=42, diagnosis=HIV")
    assert failure_code_for(error) == "sandbox_error"
    assert "HIV" not in failure_code_for(error)


def test_refusal_codes_are_listed_in_the_verifiers_check_order() -> None:
    # The verifier's docstring is the table of checks, cheapest first; each code's first mention is where it is
    # first raised. The enum's order is what operators read in `pod-agent check` and the docs.
    words = re.findall(r"\b[a-z]+(?:_[a-z]+)*\b", verifier.__doc__ or "")
    codes = {code.value for code in RefusalCode}
    first_mentions = list(dict.fromkeys(word for word in words if word in codes))
    assert first_mentions == [code.value for code in RefusalCode]
