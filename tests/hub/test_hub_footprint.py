"""The ``pod-agent hub serve`` process stays light: no pandas, pyarrow or numpy loaded, idle under 80 MB; its
collector runs young collections every COLLECT_YOUNG_EVERY allocations, not Python's 700."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pod_agent.hub.serving import COLLECT_YOUNG_EVERY

# What the hub never needs: the data stack the modeller and the agent load for tables and weights.
_HEAVY_LIBRARIES = ("pandas", "pyarrow", "numpy", "torch")
IDLE_RSS_LIMIT_MB = 80


@contextlib.contextmanager
def _hub_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python args``, a hub: the process and the first line it prints, killed at the end."""
    hub = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert hub.stdout is not None
        yield hub, hub.stdout.readline()
    finally:
        hub.kill()
        hub.wait(10)
        if hub.stdout is not None:
            hub.stdout.close()


def test_the_hub_process_loads_no_data_stack_and_idles_under_80_mb(tmp_path: Path) -> None:
    with _hub_process(
        "-m", "pod_agent", "hub", "serve", "--db", str(tmp_path / "hub.sqlite"), "--port", "0"
    ) as (hub, first_line):
        assert "hub listening on" in first_line
        # What the running process mapped: an imported extension module or library shows as its file.
        mapped = Path(f"/proc/{hub.pid}/maps").read_text()
        loaded = sorted({lib for lib in _HEAVY_LIBRARIES if f"/{lib}/" in mapped or f"/{lib}." in mapped})
        assert loaded == [], f"hub serve loaded {loaded}"
        rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{hub.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        assert rss_kib / 1024 < IDLE_RSS_LIMIT_MB


# A hub served as ``pod-agent hub serve`` serves it, that prints its collector's thresholds once it listens.
_SERVE_AND_SHOW_THRESHOLDS = """
import asyncio, gc, sys
from pod_agent.hub.serving import serve
asyncio.run(serve(db=sys.argv[1], port=0, on_listening=lambda url: print(*gc.get_threshold(), flush=True)))
"""


def test_a_serving_hub_collects_young_objects_every_collect_young_every_allocations(tmp_path: Path) -> None:
    with _hub_process("-c", _SERVE_AND_SHOW_THRESHOLDS, str(tmp_path / "hub.sqlite")) as (_, first_line):
        young, *older = map(int, first_line.split())
    assert young == COLLECT_YOUNG_EVERY > gc.get_threshold()[0]
    assert older == list(gc.get_threshold()[1:])  # the older generations keep Python's ratios
