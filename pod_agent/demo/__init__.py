"""The one-command demo: a local federation (embedded hub, pod processes) on the Adult table.

``federation`` starts and stops the parts; ``scenario`` prepares the non-IID data,
runs secure FedAvg and the central baseline, and writes the report; ``tutorial`` gives the
notebooks in examples/ a federation to train on. Names resolve
lazily: the scenario pulls in training code the federation does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pod_agent.lazy import lazy_attributes

if TYPE_CHECKING:
    from pod_agent.demo.federation import FederationError, LocalFederation, PodSite
    from pod_agent.demo.scenario import DemoOptions, run_demo
    from pod_agent.demo.tutorial import Tutorial, tutorial_federation, write_federation_file

_HOME = {
    "DemoOptions": "pod_agent.demo.scenario",
    "FederationError": "pod_agent.demo.federation",
    "LocalFederation": "pod_agent.demo.federation",
    "PodSite": "pod_agent.demo.federation",
    "run_demo": "pod_agent.demo.scenario",
    "Tutorial": "pod_agent.demo.tutorial",
    "tutorial_federation": "pod_agent.demo.tutorial",
    "write_federation_file": "pod_agent.demo.tutorial",
}

__all__ = [
    "DemoOptions",
    "FederationError",
    "LocalFederation",
    "PodSite",
    "Tutorial",
    "run_demo",
    "tutorial_federation",
    "write_federation_file",
]


__getattr__ = lazy_attributes(__name__, _HOME)
