"""Configuration: pod.toml plus POD_AGENT_* env vars, validated into PodSettings."""

from pod_agent.config.loader import load_settings
from pod_agent.config.settings import (
    DEFAULT_MAX_PREDICTION_COLUMNS,
    ENROLMENT_TOKEN_PATTERN,
    AllowedModel,
    DatasourceSection,
    DpBudget,
    HubSection,
    ImagesSection,
    ModellerKey,
    ModellerPolicy,
    OpsSection,
    PodName,
    PodSection,
    PodSettings,
    PrivacySection,
    SandboxLimitsSection,
    SecuritySection,
    TextSection,
    TrainingSection,
)
from pod_agent.config.template import example_text, render_pod_toml

__all__ = [
    "DEFAULT_MAX_PREDICTION_COLUMNS",
    "ENROLMENT_TOKEN_PATTERN",
    "AllowedModel",
    "DatasourceSection",
    "DpBudget",
    "HubSection",
    "ImagesSection",
    "ModellerKey",
    "ModellerPolicy",
    "OpsSection",
    "PodName",
    "PodSection",
    "PodSettings",
    "PrivacySection",
    "SandboxLimitsSection",
    "SecuritySection",
    "TextSection",
    "TrainingSection",
    "example_text",
    "load_settings",
    "render_pod_toml",
]
