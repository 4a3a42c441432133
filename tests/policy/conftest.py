"""Fixtures for the policy tests: real keys and a verifier over a real PodState."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import ROW_COUNT, Pod, policy_for, verifier_for
from policy_helpers import privacy as default_privacy

from pod_agent.config.settings import PrivacySection, SecuritySection
from pod_agent.protocol import IdentityKey
from pod_agent.state import PodState


@pytest.fixture(scope="session")
def alice() -> IdentityKey:
    """A super modeller in the policy."""
    return IdentityKey.generate()


@pytest.fixture(scope="session")
def bob() -> IdentityKey:
    """A general modeller in the policy."""
    return IdentityKey.generate()


@pytest.fixture(scope="session")
def mallory() -> IdentityKey:
    """A key nobody listed."""
    return IdentityKey.generate()


@pytest.fixture
def make_pod(tmp_path: Path, alice: IdentityKey, bob: IdentityKey) -> Iterator[Callable[..., Pod]]:
    opened: list[PodState] = []

    def build(
        security: SecuritySection | None = None, privacy: PrivacySection | None = None, *, row_count: int = ROW_COUNT,
        **overrides: Any,
    ) -> Pod:
        state = PodState.open(tmp_path / f"state{len(opened)}.sqlite")
        opened.append(state)
        verifier = verifier_for(
            security or policy_for(alice, bob, **overrides), privacy or default_privacy(), state, row_count=row_count
        )
        return Pod(verifier=verifier, state=state)

    yield build
    for state in opened:
        state.close()


@pytest.fixture
def pod(make_pod: Callable[..., Pod]) -> Pod:
    return make_pod()
