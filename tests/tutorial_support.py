"""The tutorials' federation for a whole test session: one hub (with its status page) and three pods.

The notebooks in examples/ and the status-page browser test share it, so its start (the census
shares, three ``pod-agent run`` processes and their warm workers) is paid once. It runs in an event
loop on a thread of its own, since the tests that use it are synchronous and the notebooks reach it
from their kernels through the federation file (``POD_AGENT_TUTORIAL_FEDERATION``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pod_agent.demo import Tutorial, tutorial_federation, write_federation_file
from pod_agent.hub import StatusPage

# Starting three pods (schema pass, registration, first warm workers) takes ~10 s on 2 cores.
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class SharedFederation:
    tutorial: Tutorial
    file: Path  # the federation file a notebook joins through $POD_AGENT_TUTORIAL_FEDERATION
    admin_token: str  # the hub's status page password


@contextlib.contextmanager
def shared_federation(root: Path) -> Iterator[SharedFederation]:
    """Start the tutorials' federation on a thread; stop it (pods, then hub) when the block ends."""
    token = secrets.token_urlsafe(32)
    started: queue.Queue[Tutorial | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with tutorial_federation(root, status=StatusPage(admin_token=token)) as tutorial:
                started.put(tutorial)
                await stop.wait()
        except BaseException as exc:
            started.put(exc)
            raise

    # The federation must be started here, not joined: the test process may inherit a file from a notebook run.
    env = os.environ.pop("POD_AGENT_TUTORIAL_FEDERATION", None)
    thread = threading.Thread(target=loop.run_until_complete, args=(hold(),), name="tutorial-federation")
    thread.start()
    try:
        outcome = started.get(timeout=START_TIMEOUT_S)
        if isinstance(outcome, BaseException):
            raise outcome
        yield SharedFederation(outcome, write_federation_file(outcome, root / "federation.json"), token)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()
        if env is not None:
            os.environ["POD_AGENT_TUTORIAL_FEDERATION"] = env


def artifacts_dir(fallback: Path) -> Path:
    """Where a test leaves files for people to look at (screenshots, timings): ``$POD_AGENT_ARTIFACTS``
    (CI sets it and prints it), else ``fallback``."""
    chosen = os.environ.get("POD_AGENT_ARTIFACTS")
    path = Path(chosen) if chosen else fallback
    path.mkdir(parents=True, exist_ok=True)
    return path
