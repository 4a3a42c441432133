"""Create the dedicated unprivileged sandbox user when missing (CI and tests run as root).

Usage: python tests/sandbox/ensure_sandbox_user.py [NAME]   (default: pod-sandbox)
Equivalent to `useradd --system --no-create-home NAME`; does nothing when NAME exists
or when not run as root (an unprivileged agent shares its own uid with workers).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys


def ensure_sandbox_user(name: str = "pod-sandbox") -> None:
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    if os.geteuid() != 0:
        return
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)


if __name__ == "__main__":
    ensure_sandbox_user(sys.argv[1] if len(sys.argv) > 1 else "pod-sandbox")
