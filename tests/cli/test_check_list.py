"""The check list: order kept, failures reported, dependants skipped, new checks appendable."""

from __future__ import annotations

from pathlib import Path

from pod_agent.cli.check import CHECKS, CheckContext, NamedCheck, run_checks
from pod_agent.errors import SandboxUnavailable


def test_appended_checks_run_in_order_and_skip_when_a_need_failed(tmp_path: Path) -> None:
    def unavailable(ctx: CheckContext) -> str:
        raise SandboxUnavailable("strict", "bubblewrap", "apt-get install bubblewrap")

    checks = [
        NamedCheck("first", lambda ctx: "fine"),
        NamedCheck("sandbox", unavailable, needs=("first",)),
        NamedCheck("task", lambda ctx: "never", needs=("sandbox",)),
    ]
    results = run_checks(tmp_path / "pod.toml", checks)
    assert [(r.name, r.status) for r in results] == [("first", "ok"), ("sandbox", "FAIL"), ("task", "skip")]
    assert "needs bubblewrap: apt-get install bubblewrap" in results[1].detail
    assert results[2].detail == "needs sandbox"


def test_default_checks_start_with_the_config() -> None:
    assert [check.name for check in CHECKS][:3] == ["config", "identity key", "datasource"]
