"""An agent that itself runs as a non-root user (systemd User=, the Docker image) can start workers.

Its workers keep the agent's own uid: only a root agent switches to the dedicated
sandbox uid and drops supplementary groups.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sbx_helpers import ENTRY, ENTRY_PATH, SANDBOX_USER

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the agent as another user")

AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
    from pod_agent.errors import SandboxUnavailable
    from pod_agent.sandbox import SandboxJob, SandboxRunner

    root, entry, entry_path, disabled = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    async def main() -> None:
        try:
            runner = SandboxRunner(SecuritySection(sandbox="standard"), SandboxLimitsSection(warm_worker=False),
                                   scratch_root=root / "scratch",
                                   unsafe_disable_layers=frozenset(disabled.split(",")) - {""})
        except SandboxUnavailable as exc:
            print("refused:", exc)
            return
        async with runner:
            job = SandboxJob(entry=entry, entry_path=entry_path, input_dir=root / "in", work_dir=root / "work",
                             request={"key": str(root / "identity.pem")})
            outcome = await runner.run(job)
        print("header:", json.dumps(outcome.header))
    asyncio.run(main())
    """
)

MODEL = "import os\n\ndef run(channel):\n    return {'uid': os.getuid()}, {}\n"
# The attack on a shared uid: the agent's key, and its memory and environment through /proc.
SNOOP = textwrap.dedent(
    """
    import os

    def _try(path, mode):
        try:
            with open(path, mode) as handle:
                handle.read(64)
        except OSError as exc:
            return type(exc).__name__
        return "read"

    def run(channel):
        agent = os.getppid()
        return {"uid": os.getuid(),
                "key": _try(channel.request()["key"], "rb"), "mem": _try(f"/proc/{agent}/mem", "r+b"),
                "environ": _try(f"/proc/{agent}/environ", "rb")}, {}
    """
)


@pytest.fixture
def agent_home() -> Iterator[Path]:
    """A directory the non-root agent can reach (pytest's tmp_path sits under a 0700 dir)."""
    home = Path(tempfile.mkdtemp(prefix="pod-agent-nonroot-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run_agent(home: Path, model: str, *, disabled: str = "") -> str:
    """Start the agent as the sandbox user (so its workers share that uid) and run ``model`` once."""
    user = pwd.getpwnam(SANDBOX_USER)
    (home / "in").mkdir()
    (home / "work").mkdir()
    (home / "in" / "model.py").write_text(model)
    (home / "identity.pem").write_text("agent-secret-key\n")
    (home / "identity.pem").chmod(0o600)
    script = home / "agent.py"
    script.write_text(AGENT_SCRIPT)
    for path in (home, home / "in", home / "work", home / "in" / "model.py", home / "identity.pem", script):
        os.chown(path, user.pw_uid, user.pw_gid)
    home.chmod(0o755)
    done = subprocess.run(
        [sys.executable, str(script), str(home), ENTRY, str(ENTRY_PATH), disabled],
        user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_non_root_agent_runs_workers_under_its_own_uid(agent_home: Path) -> None:
    out = _run_agent(agent_home, MODEL)
    assert f'"uid": {pwd.getpwnam(SANDBOX_USER).pw_uid}' in out


def test_a_non_root_agent_without_namespaces_or_landlock_refuses_to_run_workers(agent_home: Path) -> None:
    out = _run_agent(agent_home, MODEL, disabled="namespaces,landlock")
    assert out.startswith("refused: sandbox (unavailable): level 'standard' needs namespaces (disabled by "
                          "unsafe_disable_layers) or Landlock (disabled by unsafe_disable_layers), because workers "
                          "share the agent's uid: apt-get install bubblewrap")
    assert "run the agent as root with security.sandbox_user set" in out


def test_under_landlock_a_worker_sharing_the_agents_uid_cannot_read_its_key_or_memory(agent_home: Path) -> None:
    out = _run_agent(agent_home, SNOOP, disabled="namespaces")
    header = json.loads(out.removeprefix("header:"))
    assert header["uid"] == pwd.getpwnam(SANDBOX_USER).pw_uid
    assert {k: header[k] for k in ("key", "mem", "environ")} == dict.fromkeys(("key", "mem", "environ"),
                                                                              "PermissionError")
