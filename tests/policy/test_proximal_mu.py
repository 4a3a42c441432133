"""The owner bounds FedProx's proximal_mu per modeller; a task over the bound is refused, never clamped."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from policy_helpers import Pod, make_task, policy_for, signed

from pod_agent.config.settings import ModellerPolicy
from pod_agent.policy import RefusalCode
from pod_agent.protocol import IdentityKey


def test_proximal_mu_over_the_owners_bound_is_refused_with_the_bound_named(
    make_pod: Callable[..., Pod], alice: IdentityKey, bob: IdentityKey
) -> None:
    policy = policy_for(alice, bob, modellers=[
        ModellerPolicy(name="alice", public_key=alice.public.to_b64(), role="super", max_proximal_mu=0.1),
    ])
    pod = make_pod(policy)
    refusal = pod.refusal(signed(make_task(alice, proximal_mu=0.5), alice))
    assert refusal.code == RefusalCode.LIMITS_EXCEEDED.value
    assert "proximal_mu 0.5, over 'alice''s max_proximal_mu = 0.1" in refusal.detail


def test_proximal_mu_at_the_owners_bound_is_accepted(pod: Pod, alice: IdentityKey) -> None:
    verified = pod.accept(signed(make_task(alice, proximal_mu=1.0), alice))  # the default bound
    assert verified.payload.proximal_mu == 1.0


@pytest.mark.parametrize("kind", ["evaluate", "predict"])
def test_a_proximal_term_on_a_task_that_does_not_train_is_malformed(alice: IdentityKey, kind: str) -> None:
    with pytest.raises(ValueError, match="proximal_mu and scaffold apply to train tasks only"):
        make_task(alice, kind=kind, proximal_mu=0.1)
