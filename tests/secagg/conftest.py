"""Fixtures: small cohorts with fixed round keys (helpers in secagg_cohort.py)."""

from __future__ import annotations

import pytest
from secagg_cohort import Cohort, make_cohort


@pytest.fixture
def cohort3() -> Cohort:
    return make_cohort(3)


@pytest.fixture
def cohort5() -> Cohort:
    return make_cohort(5)
