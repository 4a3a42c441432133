"""An agent that itself runs as a non-root user (systemd User=, the Docker image) can start workers.

Its workers keep the agent's own uid: only a root agent switches to the dedicated
sandbox uid and drops supplementary groups.
"""

from __future__ import annotations

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
    import asyncio, sys
    from pathlib import Path
    from pod_agent.config.settings import SandboxLimitsSection, SecuritySection
    from pod_agent.sandbox import SandboxJob, SandboxRunner

    root = Path(sys.argv[1])
    async def main() -> None:
        runner = SandboxRunner(SecuritySection(sandbox="standard"), SandboxLimitsSection(warm_worker=False),
                               scratch_root=root / "scratch")
        async with runner:
            job = SandboxJob(entry=sys.argv[2], entry_path=Path(sys.argv[3]), input_dir=root / "in",
                             work_dir=root / "work", request={})
            outcome = await runner.run(job)
        print("uid-in-worker", outcome.header["uid"])
    asyncio.run(main())
    """
)

MODEL = "import os\n\ndef run(channel):\n    return {'uid': os.getuid()}, {}\n"


@pytest.fixture
def agent_home() -> Iterator[Path]:
    """A directory the non-root agent can reach (pytest's tmp_path sits under a 0700 dir)."""
    home = Path(tempfile.mkdtemp(prefix="pod-agent-nonroot-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_non_root_agent_runs_workers_under_its_own_uid(agent_home: Path) -> None:
    tmp_path = agent_home
    user = pwd.getpwnam(SANDBOX_USER)
    (tmp_path / "in").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "in" / "model.py").write_text(MODEL)
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)
    for path in (tmp_path, tmp_path / "in", tmp_path / "work", tmp_path / "in" / "model.py", script):
        os.chown(path, user.pw_uid, user.pw_gid)
    tmp_path.chmod(0o755)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), ENTRY, str(ENTRY_PATH)],
        user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"uid-in-worker {user.pw_uid}" in done.stdout
