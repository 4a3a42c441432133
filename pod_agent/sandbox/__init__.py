"""Sandbox: run modeller code confined, fail-closed (probe, bootstrap, runner, pool, frames).

Names resolve lazily so that the bootstrap, which imports this package first thing
inside every worker, does not pay for the runner's asyncio/subprocess imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pod_agent.lazy import lazy_attributes

if TYPE_CHECKING:
    from pod_agent.sandbox.caps import cap_code, release_and_print
    from pod_agent.sandbox.channel import Channel
    from pod_agent.sandbox.limits import SandboxLimits
    from pod_agent.sandbox.probe import (
        LayerReport,
        best_level,
        check_worker_package,
        plan_layers,
        probe_layers,
        sandbox_check_detail,
        sandbox_check_lines,
        sandbox_report_lines,
    )
    from pod_agent.sandbox.runner import SandboxJob, SandboxOutcome, SandboxRunner

_HOME = {
    "Channel": "pod_agent.sandbox.channel",
    "LayerReport": "pod_agent.sandbox.probe",
    "SandboxJob": "pod_agent.sandbox.runner",
    "SandboxLimits": "pod_agent.sandbox.limits",
    "SandboxOutcome": "pod_agent.sandbox.runner",
    "SandboxRunner": "pod_agent.sandbox.runner",
    "best_level": "pod_agent.sandbox.probe",
    "cap_code": "pod_agent.sandbox.caps",
    "check_worker_package": "pod_agent.sandbox.probe",
    "plan_layers": "pod_agent.sandbox.probe",
    "probe_layers": "pod_agent.sandbox.probe",
    "release_and_print": "pod_agent.sandbox.caps",
    "sandbox_check_detail": "pod_agent.sandbox.probe",
    "sandbox_check_lines": "pod_agent.sandbox.probe",
    "sandbox_report_lines": "pod_agent.sandbox.probe",
}

__all__ = [
    "Channel",
    "LayerReport",
    "SandboxJob",
    "SandboxLimits",
    "SandboxOutcome",
    "SandboxRunner",
    "best_level",
    "cap_code",
    "check_worker_package",
    "plan_layers",
    "probe_layers",
    "release_and_print",
    "sandbox_check_detail",
    "sandbox_check_lines",
    "sandbox_report_lines",
]


__getattr__ = lazy_attributes(__name__, _HOME)
