"""The local federation the tutorials in ``examples/`` train on: started for them, or one already running.

Owns ``tutorial_federation`` (an ``async with`` block that yields a ``Tutorial``: the hub URL, the
modeller's key, the pods and their pinned keys, and a census table to fit on locally) and the
federation file that lets several notebooks share one running federation
(``write_federation_file``; a notebook reads it when ``POD_AGENT_TUTORIAL_FEDERATION`` names it).
Without that file it starts its own: the census table's first rows split by marital status over
three pods (``scenario.prepare_sites``), an embedded hub and one ``pod-agent run`` per pod
(``LocalFederation``) at the strongest sandbox level this host offers, each pod keeping one warm
worker. Everything here is what a modeller's own set-up would be, only on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from pod_agent.config import SecuritySection
from pod_agent.demo.federation import LocalFederation, PodSite
from pod_agent.demo.scenario import CONTINUOUS, prepare_sites
from pod_agent.errors import PodAgentError
from pod_agent.hub import StatusPage
from pod_agent.protocol import IdentityKey, PublicKey
from pod_agent.sandbox import best_level, probe_layers

FEDERATION_ENV = "POD_AGENT_TUTORIAL_FEDERATION"
# Enough rows that every pod's smallest split keeps the default privacy floor's 100 rows (min_rows).
TUTORIAL_ROWS = 6000
# One warm worker per pod: a tutorial sends one task at a time, and each worker costs ~3.5 CPU-s to start.
_POD_TOML = "\n[sandbox_limits]\nwarm_pool = 1\n"
# The tutorial's pods also answer plain FedAvg, so that the notebooks can show both; a real owner decides.
_PLAIN_ALLOWED = "\n[privacy]\nrequire_secure_aggregation = false\n"


class TutorialError(PodAgentError):
    """The tutorial's federation file is missing or unreadable; the message names it and the fix."""


@dataclass(frozen=True)
class Tutorial:
    """A running federation as a modeller sees it."""

    hub_url: str
    modeller: IdentityKey
    pod_keys: dict[str, PublicKey]  # as the pods' owners sent them: the modeller pins these
    census: Path  # the census rows the pods were cut from, to fit on locally first
    force_stypes: dict[str, list[str]]  # how the pods read the census columns (pod.toml's force_stypes)

    @property
    def pods(self) -> list[str]:
        return sorted(self.pod_keys)


@contextlib.asynccontextmanager
async def tutorial_federation(root: Path, *, status: StatusPage | None = None) -> AsyncIterator[Tutorial]:
    """The federation named by ``$POD_AGENT_TUTORIAL_FEDERATION``, or a new one under ``root``, stopped
    on exit (``status``: the hub's operator page, for a federation started here)."""
    shared = os.environ.get(FEDERATION_ENV)
    if shared:
        yield read_federation_file(Path(shared))
        return
    root.mkdir(parents=True, exist_ok=True)
    sites = await asyncio.to_thread(prepare_sites, root / "data", first_rows=TUTORIAL_ROWS)
    sites = [replace(s, extra_toml=s.extra_toml + _POD_TOML + _PLAIN_ALLOWED) for s in sites]
    modeller = IdentityKey.generate()
    level = best_level(await asyncio.to_thread(probe_layers, SecuritySection()))
    async with LocalFederation(root, sites, modeller=modeller, sandbox=level, status=status) as fed:
        yield Tutorial(
            hub_url=fed.hub_url, modeller=modeller, pod_keys=dict(fed.pod_keys), census=_census(root),
            force_stypes=_stypes(sites),
        )


def _census(root: Path) -> Path:
    return root / "data" / "adult.parquet"


def _stypes(sites: list[PodSite]) -> dict[str, list[str]]:
    return sites[0].force_stypes if sites else {"continuous": CONTINUOUS}


def write_federation_file(tutorial: Tutorial, path: Path) -> Path:
    """Describe a running federation for notebooks to join: the hub, the pods' keys, the census file, and
    the modeller's key beside it (``<path>.modeller.pem``, 0600)."""
    key_path = path.with_suffix(".modeller.pem")
    tutorial.modeller.save(key_path, overwrite=True)
    path.write_text(json.dumps({
        "hub_url": tutorial.hub_url, "modeller_key": str(key_path), "census": str(tutorial.census),
        "pod_keys": {name: key.to_b64() for name, key in tutorial.pod_keys.items()},
        "force_stypes": tutorial.force_stypes,
    }, indent=2), encoding="utf-8")
    return path


def read_federation_file(path: Path) -> Tutorial:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Tutorial(
            hub_url=str(raw["hub_url"]), modeller=IdentityKey.load(Path(raw["modeller_key"])),
            pod_keys={name: PublicKey.from_b64(key) for name, key in raw["pod_keys"].items()},
            census=Path(raw["census"]), force_stypes=raw["force_stypes"],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TutorialError(
            f"federation file {path} (from ${FEDERATION_ENV}) cannot be read: {exc}; unset {FEDERATION_ENV} to "
            "start a federation in the notebook, or write the file with write_federation_file"
        ) from exc
