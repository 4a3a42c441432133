"""The one-command demo: a local federation (embedded hub, pod processes) on the Adult table.

``federation`` starts and stops the parts; ``scenario`` prepares the non-IID data,
runs secure FedAvg and the central baseline, and writes the report. Names resolve
lazily: the scenario pulls in training code the federation does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pod_agent.lazy import lazy_attributes

if TYPE_CHECKING:
    from pod_agent.demo.federation import FederationError, LocalFederation, PodSite
    from pod_agent.demo.scenario import DemoOptions, run_demo

_HOME = {
    "DemoOptions": "pod_agent.demo.scenario",
    "FederationError": "pod_agent.demo.federation",
    "LocalFederation": "pod_agent.demo.federation",
    "PodSite": "pod_agent.demo.federation",
    "run_demo": "pod_agent.demo.scenario",
}

__all__ = ["DemoOptions", "FederationError", "LocalFederation", "PodSite", "run_demo"]


__getattr__ = lazy_attributes(__name__, _HOME)
