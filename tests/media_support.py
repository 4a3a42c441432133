"""The image and text tests' model that probes files (the data and models are the package's own:
``pod_agent.data.shapes`` and ``pod_agent.demo.media_models``)."""

from __future__ import annotations

from pod_agent.demo.media_models import SHAPE_NET, SHAPE_NET_CLASS


def probing_shape_net(paths: list[str]) -> str:
    """``SHAPE_NET`` whose first forward tries to read each of ``paths`` and raises, failing its task, if one
    opens: a task that completes read none of them."""
    return SHAPE_NET + f'''

PROBED_PATHS = {paths!r}


def _probe():
    for path in PROBED_PATHS:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        raise RuntimeError(f"read {{len(data)}} bytes of {{path}}")


class Probing{SHAPE_NET_CLASS}({SHAPE_NET_CLASS}):
    def forward(self, inputs, labels=None):
        _probe()
        return super().forward(inputs, labels)
'''


PROBING_SHAPE_NET_CLASS = f"Probing{SHAPE_NET_CLASS}"
