"""Task limits: what a task asks for, what the pod allows, and the rlimits they come to.

Owns the resolution "a task can ask for less, never more", the process allowance of
data-parallel ranks (each rank gets what one worker gets), and the rlimit set the
bootstrap applies (confine.py applies it; process.py hands it over in the ``go`` and
``request`` frames; the cgroup caps come from the same numbers in cgroup.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pod_agent.config import SandboxLimitsSection


@dataclass(frozen=True)
class SandboxLimits:
    """What one task asks for; None means the pod's limit. A task can ask for less, never more."""

    wall_timeout_s: float | None = None
    cpu_time_s: int | None = None
    memory_mb: int | None = None
    max_processes: int | None = None
    max_open_files: int | None = None
    max_file_mb: int | None = None
    max_output_mb: int | None = None


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits a worker runs under: the pod's, lowered wherever the task asked for less."""

    wall_timeout_s: float
    cpu_time_s: int
    memory_mb: int
    max_processes: int
    max_open_files: int
    max_file_mb: int
    max_output_mb: int
    # Data-parallel processes the pod owner grants (training.devices): max_processes already counts
    # all of them, and the worker gets loopback networking for their rendezvous (process.py).
    ranks: int = 1

    @classmethod
    def resolve(cls, pod: SandboxLimitsSection, task: SandboxLimits, *, ranks: int = 1) -> EffectiveLimits:
        def low(name: str) -> Any:
            mine, theirs = getattr(pod, name), getattr(task, name)
            return mine if theirs is None else min(mine, theirs)

        if ranks < 1:
            raise ValueError(f"ranks must be at least 1, not {ranks}")
        values = {name: low(name) for name in cls.__dataclass_fields__ if name != "ranks"}
        # pids.max and RLIMIT_NPROC count threads too: every rank has the threads one worker has.
        values["max_processes"] *= ranks
        return cls(**values, ranks=ranks)

    def rlimits(self, *, nproc_slack: int | None) -> dict[str, int]:
        """The rlimit set; ``nproc_slack`` (None: no RLIMIT_NPROC) is what the uid's other processes
        (bwrap's monitor and init, parked workers) may hold on top of this task's own."""
        limits = {"data": self.memory_mb << 20, "nofile": self.max_open_files, "fsize": self.max_file_mb << 20,
                  "core": 0}
        if nproc_slack is not None:
            limits["nproc"] = self.max_processes + nproc_slack
        return limits


def granted_ranks(devices: int | str, *, gpu: bool, dev_root: Path = Path("/dev")) -> int:
    """The data-parallel processes ``training.devices`` grants a training task: a count as given;
    "auto" is one per GPU (``/dev/nvidia<N>``) on a GPU pod, else one process."""
    if isinstance(devices, int):
        return devices
    gpus = [node for node in dev_root.glob("nvidia*") if node.name.removeprefix("nvidia").isdigit()]
    return max(len(gpus), 1) if gpu else 1


__all__ = ["EffectiveLimits", "SandboxLimits", "granted_ranks"]
