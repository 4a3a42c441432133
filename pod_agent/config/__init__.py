"""Configuration: pod.toml plus POD_AGENT_* env vars, validated into PodSettings."""

from pod_agent.config.loader import load_settings
from pod_agent.config.settings import (
    AllowedModel,
    DatasourceSection,
    HubSection,
    ModellerKey,
    ModellerPolicy,
    OpsSection,
    PodName,
    PodSection,
    PodSettings,
    PrivacySection,
    SandboxLimitsSection,
    SecuritySection,
    TrainingSection,
)
from pod_agent.config.template import example_text, render_pod_toml

__all__ = [
    "AllowedModel",
    "DatasourceSection",
    "HubSection",
    "ModellerKey",
    "ModellerPolicy",
    "OpsSection",
    "PodName",
    "PodSection",
    "PodSettings",
    "PrivacySection",
    "SandboxLimitsSection",
    "SecuritySection",
    "TrainingSection",
    "example_text",
    "load_settings",
    "render_pod_toml",
]
