"""Headless Chromium (the Debian package) driven from the command line: a page's DOM and a screenshot.

Skips where Chromium is missing, except in CI (``CI=true``), where a missing browser fails the test:
`.ci/install` installs it when run as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_TIMEOUT_S = 60
# No network beyond the page, no first-run or update machinery, a profile of its own; --no-sandbox because CI
# runs as root, where Chromium's own sandbox refuses to start; /tmp rather than a container's small /dev/shm.
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars", "--disable-dev-shm-usage",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs headless Chromium for the status page test: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def _run(args: list[str], profile: Path) -> str:
    done = subprocess.run(
        [chromium(), *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def dump_dom(url: str, *, profile: Path) -> str:
    """The DOM after the page loaded (scripts run, styles applied), serialised."""
    return _run(["--dump-dom", url], profile)


def screenshot(url: str, out: Path, *, profile: Path, size: tuple[int, int] = (1280, 1700)) -> Path:
    _run([f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url], profile)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return out
