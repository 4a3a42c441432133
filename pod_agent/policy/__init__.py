"""Policy: the pod's own decision on who may run what, the owner's privacy floor and trusted peers,
the differential-privacy budgets, the owner's review of model code, and the fixed words (refusal and
failure codes) it answers with."""

from pod_agent.policy.budget import BudgetUse, NoisePlan, budget_report, epsilon, gaussian_event, noise_plan
from pod_agent.policy.codes import FailureCode, RefusalCode, failure_code_for
from pod_agent.policy.floor import PrivacyFloor, effective_steps, used_splits
from pod_agent.policy.peers import TrustedPeers, install_roster
from pod_agent.policy.review import model_text, review_diff
from pod_agent.policy.verifier import TaskVerifier, VerifiedTask, check_fetched_source, modeller_keys

__all__ = [
    "BudgetUse",
    "FailureCode",
    "NoisePlan",
    "PrivacyFloor",
    "RefusalCode",
    "TaskVerifier",
    "TrustedPeers",
    "VerifiedTask",
    "budget_report",
    "check_fetched_source",
    "effective_steps",
    "epsilon",
    "failure_code_for",
    "gaussian_event",
    "install_roster",
    "model_text",
    "modeller_keys",
    "noise_plan",
    "review_diff",
    "used_splits",
]
