"""Sandbox: run modeller code confined, fail-closed (probe, bootstrap, runner, frames)."""

from pod_agent.sandbox.channel import Channel
from pod_agent.sandbox.probe import LayerReport, best_level, plan_layers, probe_layers, sandbox_check_lines
from pod_agent.sandbox.runner import SandboxJob, SandboxLimits, SandboxOutcome, SandboxRunner

__all__ = [
    "Channel",
    "LayerReport",
    "SandboxJob",
    "SandboxLimits",
    "SandboxOutcome",
    "SandboxRunner",
    "best_level",
    "plan_layers",
    "probe_layers",
    "sandbox_check_lines",
]
