"""Policy: the pod's own decision on who may run what, and the refusal codes it answers with."""

from pod_agent.policy.codes import FailureCode, RefusalCode, failure_code_for
from pod_agent.policy.floor import PrivacyFloor
from pod_agent.policy.peers import TrustedPeers, install_roster
from pod_agent.policy.verifier import TaskVerifier, VerifiedTask, check_fetched_source

__all__ = ["FailureCode", "PrivacyFloor", "RefusalCode", "TrustedPeers", "failure_code_for", "TaskVerifier", "VerifiedTask", "check_fetched_source", "install_roster"]
