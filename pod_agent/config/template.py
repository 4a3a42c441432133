"""The commented example pod.toml, and a pod's first pod.toml rendered from it.

Owns the example file shipped in the package (``pod.example.toml``, which the repository's
``config/pod.example.toml`` links to) and filling in the three values ``pod-agent init``
asks for. Writing the file is the CLI's job.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

# The lines of pod.example.toml that `pod-agent init` fills in; a test keeps them in the file.
_NAME_LINE = 'name = "example-pod"'
_STATE_DIR_LINE = 'state_dir = "/var/lib/pod-agent"'
_DATA_PATH_LINE = 'path = "data/table.csv"'


def example_text() -> str:
    """The example pod.toml, every key with its default and a comment."""
    return files("pod_agent.config").joinpath("pod.example.toml").read_text(encoding="utf-8")


def render_pod_toml(*, name: str, state_dir: Path, data_path: Path) -> str:
    """The example with this pod's name, state directory and data path filled in."""
    text = example_text()
    for line, key, value in (
        (_NAME_LINE, "name", name),
        (_STATE_DIR_LINE, "state_dir", str(state_dir)),
        (_DATA_PATH_LINE, "path", str(data_path)),
    ):
        # JSON string escaping is valid TOML basic-string escaping.
        text = text.replace(line, f"{key} = {json.dumps(value)}", 1)
    return text
