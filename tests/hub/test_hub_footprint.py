"""The ``pod-agent hub serve`` process stays light: no pandas, pyarrow or numpy loaded, idle under 80 MB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# What the hub never needs: the data stack the modeller and the agent load for tables and weights.
_HEAVY_LIBRARIES = ("pandas", "pyarrow", "numpy", "torch")
IDLE_RSS_LIMIT_MB = 80


def test_the_hub_process_loads_no_data_stack_and_idles_under_80_mb(tmp_path: Path) -> None:
    hub = subprocess.Popen(
        [sys.executable, "-m", "pod_agent", "hub", "serve", "--db", str(tmp_path / "hub.sqlite"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert hub.stdout is not None and "hub listening on" in hub.stdout.readline()
        # What the running process mapped: an imported extension module or library shows as its file.
        mapped = Path(f"/proc/{hub.pid}/maps").read_text()
        loaded = sorted({lib for lib in _HEAVY_LIBRARIES if f"/{lib}/" in mapped or f"/{lib}." in mapped})
        assert loaded == [], f"hub serve loaded {loaded}"
        rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{hub.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        assert rss_kib / 1024 < IDLE_RSS_LIMIT_MB
    finally:
        hub.kill()
        hub.wait(10)
        if hub.stdout is not None:
            hub.stdout.close()
