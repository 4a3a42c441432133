"""How the benchmarks time a call: median wall and CPU seconds over repeats (other load only adds time)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Median (wall, CPU) seconds of ``fn()`` over ``repeats`` calls, and the last call's result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls), statistics.median(cpus), result
