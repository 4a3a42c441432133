"""Level rules (fail-closed) on synthetic layer reports, and the lines `pod-agent check` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from pod_agent.config.settings import DatasourceSection, PodSection, PodSettings, SecuritySection
from pod_agent.errors import SandboxError, SandboxUnavailable
from pod_agent.sandbox import LayerReport, best_level, plan_layers, probe_layers, sandbox_check_detail
from pod_agent.sandbox.probe import LAYERS, sandbox_report_lines


def _reports(*active: str) -> list[LayerReport]:
    return [LayerReport(name, name in active, "here" if name in active else "missing here", f"install {name}")
            for name in LAYERS]


def test_strict_with_namespaces_uses_every_active_layer_but_landlock() -> None:
    layers = plan_layers("strict", _reports(*LAYERS))
    assert layers == {"uid", "rlimits", "namespaces", "seccomp", "cgroup"}


def test_strict_falls_back_to_seccomp_plus_landlock() -> None:
    layers = plan_layers("strict", _reports("uid", "rlimits", "seccomp", "landlock"))
    assert layers == {"uid", "rlimits", "seccomp", "landlock"}


@pytest.mark.parametrize(
    ("active", "message"),
    [
        (("rlimits", "namespaces", "seccomp"), "level 'strict' needs uid"),
        (("uid", "rlimits", "seccomp"), "needs namespaces .* or seccomp \\+ Landlock \\(landlock missing\\)"),
        (("uid", "rlimits", "landlock"), "seccomp \\+ Landlock \\(seccomp missing\\)"),
    ],
)
def test_strict_refuses_without_isolation_or_uid(active: tuple[str, ...], message: str) -> None:
    with pytest.raises(SandboxUnavailable, match=message):
        plan_layers("strict", _reports(*active))


def test_standard_needs_uid_rlimits_and_seccomp_only() -> None:
    assert plan_layers("standard", _reports("uid", "rlimits", "seccomp")) == {"uid", "rlimits", "seccomp"}
    with pytest.raises(SandboxUnavailable, match="level 'standard' needs seccomp \\(missing here\\): install seccomp"):
        plan_layers("standard", _reports("uid", "rlimits", "namespaces"))


def _shared_uid(*active: str) -> list[LayerReport]:
    """A non-root agent's host: workers keep the agent's uid."""
    return [LayerReport("uid", True, "agent is unprivileged", shares_agent_uid=True) if r.name == "uid" else r
            for r in _reports(*active)]


@pytest.mark.parametrize("level", ["strict", "standard"])
def test_workers_sharing_the_agents_uid_need_namespaces_or_landlock(level: str) -> None:
    with pytest.raises(
        SandboxUnavailable,
        match=f"level '{level}' needs namespaces \\(missing here\\) or Landlock "
        "\\(missing here\\), because workers share the agent's uid: apt-get install bubblewrap.*; or boot "
        "a kernel >= 5.13 with landlock in the lsm= list; or run the agent as root with "
        "security.sandbox_user set",
    ):
        plan_layers(level, _shared_uid("uid", "rlimits", "seccomp", "cgroup"))
    assert "landlock" in plan_layers(level, _shared_uid("uid", "rlimits", "seccomp", "landlock"))
    assert "namespaces" in plan_layers(level, _shared_uid("uid", "rlimits", "seccomp", "namespaces"))
    # A dedicated uid (root agent) keeps the old rule: standard needs no isolation layer.
    if level == "standard":
        assert plan_layers(level, _reports("uid", "rlimits", "seccomp")) == {"uid", "rlimits", "seccomp"}


def test_check_says_why_a_shared_uid_host_refuses_tasks() -> None:
    lines = sandbox_report_lines("standard", _shared_uid("uid", "rlimits", "seccomp"))
    assert lines[0].startswith("sandbox: level 'standard' NOT satisfied, tasks will be refused: level 'standard' "
                               "needs namespaces")
    assert "because workers share the agent's uid" in lines[0]
    assert plan_layers("none", _shared_uid("rlimits")) == {"rlimits"}


def test_none_never_refuses() -> None:
    assert plan_layers("none", _reports()) == frozenset()


def test_best_level_is_the_strongest_satisfiable() -> None:
    assert best_level(_reports(*LAYERS)) == "strict"
    assert best_level(_reports("uid", "rlimits", "seccomp")) == "standard"
    assert best_level(_reports("rlimits")) == "none"


def test_report_lines_name_each_layer_state_and_remedy() -> None:
    lines = sandbox_report_lines("strict", _reports("uid", "rlimits", "seccomp"))
    assert lines[0].startswith("sandbox: level 'strict' NOT satisfied, tasks will be refused")
    assert any(line.split()[:2] == ["namespaces", "unavailable"] and "(enable: install namespaces)" in line
               for line in lines[1:])
    assert len(lines) == 2 + len(LAYERS)
    assert lines[-1].startswith("  forks      unavailable the level is not satisfied")


def test_this_host_probes_all_layers_active() -> None:
    # This machine and CI (Debian, root, bubblewrap + libseccomp2) offer every layer; strict needs them.
    reports = probe_layers(SecuritySection(sandbox_user="pod-sandbox"))
    assert {r.name: r.active for r in reports} == dict.fromkeys(LAYERS, True)


def _settings(level: str, user: str) -> PodSettings:
    return PodSettings(pod=PodSection(name="p"), datasource=DatasourceSection(path=Path("/nonexistent.csv")),
                       security=SecuritySection(sandbox=level, sandbox_user=user))


def test_check_detail_lists_layers_when_the_level_holds() -> None:
    detail = sandbox_check_detail(_settings("strict", "pod-sandbox"))
    assert detail.startswith("level 'strict' satisfied")
    assert len(detail.splitlines()) == 2 + len(LAYERS)
    assert detail.splitlines()[-1].startswith("  forks      active")


def test_check_detail_fails_with_every_layer_when_the_level_cannot_hold() -> None:
    with pytest.raises(SandboxError, match=r"\(level_not_satisfied\): level 'strict' NOT satisfied") as caught:
        sandbox_check_detail(_settings("strict", "pod-no-such-user"))
    assert "useradd --system --no-create-home pod-no-such-user" in caught.value.detail
