"""The modeller's DP plan: a target epsilon becomes the noise multiplier for the rounds, or the rounds that fit."""

from __future__ import annotations

import pytest

from pod_agent.errors import ModellerError
from pod_agent.modeller.fedavg import DpTarget, plan_dp
from pod_agent.policy.budget import epsilon, gaussian_event


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_the_planned_noise_spends_just_under_the_target_as_the_pods_account_it(target: float) -> None:
    planned = plan_dp(DpTarget(epsilon=target, delta=1e-5, clip_norm=0.5), 10)
    spent = epsilon([gaussian_event(planned.noise_multiplier)] * 10, 1e-5)
    assert target * 0.995 <= spent <= target
    assert (planned.rounds, planned.clip_norm) == (10, 0.5)


def test_a_given_noise_multiplier_plans_the_rounds_that_fit() -> None:
    planned = plan_dp(DpTarget(epsilon=3.0, delta=1e-5, noise_multiplier=3.0), 10)
    assert planned.rounds == 4  # 4 releases at z = 3 cost 2.98; 5 cost 3.38
    with pytest.raises(ModellerError, match="one round at noise multiplier 0.5 already costs"):
        plan_dp(DpTarget(epsilon=3.0, delta=1e-5, noise_multiplier=0.5), 10)
