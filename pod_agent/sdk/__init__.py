"""What model source may import: the base classes of the three model styles.

Style A: subclass ``PodModel`` (optionally with ``PodClassifierMixin`` first) and
implement ``create_model``. Style B: a plain ``nn.Module`` returning a dict, run by
``ModuleAdapter``. Style C: a declarative ``ModelSpec``, run by ``DeclarativeModel``.
Training, data loading and the sandbox are ``pod_agent.training``'s concern.
"""

from pod_agent.sdk.adapter import ModuleAdapter
from pod_agent.sdk.base import Batch, PodClassifierMixin, PodModel
from pod_agent.sdk.datastructure import Datastructure
from pod_agent.sdk.declarative import DeclarativeModel, LayerSpec, ModelSpec
from pod_agent.sdk.registry import LAYERS, LOSSES, OPTIMIZERS

__all__ = [
    "LAYERS",
    "LOSSES",
    "OPTIMIZERS",
    "Batch",
    "Datastructure",
    "DeclarativeModel",
    "LayerSpec",
    "ModelSpec",
    "ModuleAdapter",
    "PodClassifierMixin",
    "PodModel",
]
