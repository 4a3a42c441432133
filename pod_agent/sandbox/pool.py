"""The warm pool: workers started ahead of tasks, past ``prepare()`` and confined, parked per entry.

Owns how many spare workers an entry keeps (``depth``), starting them, handing one to a task
and starting its replacement at that moment (not after the task's tree is torn down, so a
federated loop's next task, a fraction of a second later, finds a worker already past its
imports), and killing the spares at shutdown. A parked worker serves one task and dies with
it: the pool never takes a worker back. Launching a worker is process.py's; which task gets
one, and what happens to it after, is runner.py's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from pod_agent.errors import SandboxError
from pod_agent.sandbox.limits import EffectiveLimits
from pod_agent.sandbox.process import LaunchSpec, WorkerProcess

log = logging.getLogger("pod_agent.sandbox")

_Key = tuple[str, str]


class WarmPool:
    """Spare workers per entry; ``depth`` 0 keeps none (every task starts cold).

    Workers for one entry start one after another, never together: on a small host two
    starts at once (each ~3 CPU-seconds of imports) would each be ready later than the first
    of two sequential ones, and the next task waits for the first.
    """

    def __init__(self, *, depth: int, limits: EffectiveLimits, new_slot: Callable[[], Path]) -> None:
        self.depth = depth
        self._limits, self._new_slot = limits, new_slot
        self._parked: dict[_Key, list[WorkerProcess]] = {}
        self._fillers: dict[_Key, asyncio.Task[None]] = {}
        self._arrived: dict[_Key, asyncio.Event] = {}
        self._closed = False

    def parked(self, spec: LaunchSpec) -> int:
        return len(self._parked.get(spec.key, ()))

    def _filling(self, spec: LaunchSpec) -> asyncio.Task[None] | None:
        task = self._fillers.get(spec.key)
        return None if task is None or task.done() else task

    def top_up(self, spec: LaunchSpec) -> None:
        """Start workers in the background, one at a time, until ``depth`` are parked."""
        if self._closed or self.parked(spec) >= self.depth or self._filling(spec) is not None:
            return
        task = asyncio.create_task(self._fill(spec), name=f"sandbox-prewarm-{spec.entry}")
        task.add_done_callback(self._filled)
        self._fillers[spec.key] = task

    async def fill(self, spec: LaunchSpec) -> None:
        """Top up and wait until ``depth`` are parked; raises the start's error when none is."""
        self.top_up(spec)
        task = self._filling(spec)
        if task is not None:
            await asyncio.wait({task})
        if self.parked(spec) or self._closed or self.depth == 0:
            return
        if task is not None and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc
        raise SandboxError("no_warm_worker", f"no warm worker for {spec.entry} could be parked")

    async def wait(self, spec: LaunchSpec) -> bool:
        """Wait for the starts under way for ``spec``; True when a worker is parked."""
        task = self._filling(spec)
        if task is not None:
            await asyncio.wait({task})
        return self.parked(spec) > 0

    async def take(self, spec: LaunchSpec) -> WorkerProcess | None:
        """A parked worker for ``spec`` (waiting for one under way: never slower than a cold start begun
        now), or None when there is none; either way the pool starts filling up again now."""
        try:
            while not self._parked.get(spec.key):
                task = self._filling(spec)
                if task is None:
                    return None
                arrived = self._arrived.setdefault(spec.key, asyncio.Event())
                arrived.clear()
                waiter = asyncio.ensure_future(arrived.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            return self._parked[spec.key].pop(0)
        finally:
            self.top_up(spec)

    async def _fill(self, spec: LaunchSpec) -> None:
        while not self._closed and self.parked(spec) < self.depth:
            worker = WorkerProcess(spec, slot=self._new_slot(), limits=self._limits, warm=True)
            try:
                await worker.start()
            except BaseException:
                # Shielded: a start cancelled at shutdown still has its tree killed.
                await asyncio.shield(worker.discard())
                raise
            if self._closed:
                await worker.discard()
                return
            self._parked.setdefault(spec.key, []).append(worker)
            self._arrived.setdefault(spec.key, asyncio.Event()).set()

    @staticmethod
    def _filled(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, (SandboxError, OSError)):
            log.warning("warm worker could not start (%s); a task finding none starts cold",
                        exc.code if isinstance(exc, SandboxError) else exc)
        elif exc is not None:
            log.error("warm worker start failed: %r", exc)

    async def aclose(self) -> None:
        """Cancel the starts under way and kill every parked worker (agent shutdown)."""
        self._closed = True
        tasks = [task for task in self._fillers.values() if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for workers in self._parked.values():
            for worker in workers:
                await worker.discard()
        self._parked.clear()


__all__ = ["WarmPool"]
