"""`pod-agent` imports a command's module only when that command runs, and lists them all without importing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pod_agent.cli.app import COMMANDS, load_command

# What listing commands, or running one that needs no torch, must not import.
_HEAVY = ("torch", "pandas", "pyarrow", "aiohttp")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_help_is_the_commands_own(name: str) -> None:
    assert COMMANDS[name].help == load_command(name).get_short_help_str(limit=1000)


def _imported_after(*argv: str) -> set[str]:
    code = (
        "import sys\nfrom pod_agent.cli.app import main\n"
        f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return set(child.stderr.strip().splitlines()[-1].split())


def test_help_imports_no_command_module() -> None:
    modules = _imported_after("--help")
    assert not {m for m in modules if m.startswith("pod_agent.cli.") and m != "pod_agent.cli.app"}
    assert not set(_HEAVY) & modules


def test_a_modeller_command_imports_only_its_module_and_no_data_stack() -> None:
    modules = _imported_after("modeller", "--help")
    assert {m for m in modules if m.startswith("pod_agent.cli.")} >= {"pod_agent.cli.modeller"}
    assert "pod_agent.cli.hub" not in modules and "pod_agent.cli.check" not in modules
    assert not {"torch", "pandas", "pyarrow"} & modules
