"""The exception tree drawn in ``pod_agent/errors.py`` is the tree the package defines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pod_agent.errors

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "pod_agent"
# "    │   ├── Name   text": the column of the name gives its depth (4 characters a level).
_DRAWN = re.compile(r"^(?P<indent>[ │]*)(?:├── |└── )?(?P<name>[A-Z]\w+)\b")


def _drawn_parents() -> dict[str, str]:
    """Each class drawn in the errors docstring and the class drawn as its parent."""
    doc = pod_agent.errors.__doc__ or ""
    tree = doc.split("\n\n")[1]
    parents: dict[str, str] = {}
    stack: list[str] = []
    for line in tree.splitlines():
        match = _DRAWN.match(line)
        assert match, f"unreadable tree line {line!r}"
        depth = (len(match["indent"]) - 4) // 4 + (1 if "──" in line else 0)
        del stack[depth:]
        if stack:
            parents[match["name"]] = stack[-1]
        stack.append(match["name"])
    return parents


def _defined_parents() -> dict[str, str]:
    """Each class in pod_agent that derives from PodAgentError, with its (single) base."""
    bases: dict[str, str] = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and len(node.bases) == 1 and isinstance(node.bases[0], ast.Name):
                bases[node.name] = node.bases[0].id
    errors = {"PodAgentError"}
    grew = True
    while grew:
        found = {name for name, base in bases.items() if base in errors} - errors
        errors |= found
        grew = bool(found)
    return {name: bases[name] for name in errors if name != "PodAgentError"}


def test_every_pod_agent_error_is_drawn_under_its_base() -> None:
    assert _drawn_parents() == _defined_parents()
