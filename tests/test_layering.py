"""The package layout is the architecture: packages import only those below them.

Data flows one way (hub link -> protocol -> policy -> state -> data -> sandbox ->
training -> secagg -> outbox -> hub link), and only ``training`` and ``sdk`` may
import torch so that the daemon stays light.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "pod_agent"

# Rank of each concern; a module may import pod_agent packages of a lower or equal rank
# only. agent, hub and modeller share a rank but may not import each other.
RANKS = {
    "errors": 0,
    "lazy": 0,
    "config": 1,
    "ops": 2,
    "protocol": 3,
    "data": 4,
    "state": 5,
    "policy": 6,
    "sandbox": 7,
    "sdk": 8,
    "training": 9,
    "secagg": 10,
    "agent": 11,
    "hub": 11,
    "modeller": 11,
    "demo": 12,
    "cli": 13,
}
PEERS_THAT_MUST_NOT_MEET = {"agent", "hub", "modeller"}
TORCH_MODULES = {"torch", "pytorch_lightning", "lightning", "torchmetrics"}
MAY_IMPORT_TORCH = {"training", "sdk"}
# Model source shipped as text for modellers to send; pods import it only inside the sandbox.
MODEL_SOURCES = {PACKAGE_ROOT / "demo" / "adult_mlp.py"}


def _concern(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT)
    return "root" if rel.parts[0] in ("__init__.py", "__main__.py") else rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = set(map(id, tree.body))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top_level))
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_module_imports_only_lower_layers(path: Path) -> None:
    concern = _concern(path)
    if concern == "root":
        return
    assert concern in RANKS, f"{path}: new package {concern!r} needs a rank in tests/test_layering.py"
    for module, _ in _imports(path):
        parts = module.split(".")
        if parts[0] != "pod_agent" or len(parts) < 2:
            continue
        target = parts[1]
        if target == concern or target == "__init__":
            continue
        assert target in RANKS, f"{path} imports unknown package pod_agent.{target}"
        assert RANKS[target] <= RANKS[concern], f"{path}: {concern} must not import {module}"
        assert not (
            concern in PEERS_THAT_MUST_NOT_MEET and target in PEERS_THAT_MUST_NOT_MEET
        ), f"{path}: {concern} must not import {module}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_only_training_and_sdk_import_torch_at_module_level(path: Path) -> None:
    if _concern(path) in MAY_IMPORT_TORCH or path in MODEL_SOURCES:
        return
    heavy = [m for m, top in _imports(path) if top and m.split(".")[0] in TORCH_MODULES]
    assert not heavy, f"{path} imports {heavy} at module level; only training and sdk may"


def test_daemon_starts_without_torch() -> None:
    code = (
        "import sys, pod_agent.agent, pod_agent.hub, pod_agent.cli.app\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'pytorch_lightning', 'lightning'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
