"""A re-keyed pod takes its name over on a real hub with the rotation statement its old key signed."""

from __future__ import annotations

from typing import Any

import pytest

from pod_agent.agent.hubclient import HubClient
from pod_agent.config.settings import HubSection
from pod_agent.errors import HubRejected
from pod_agent.hub import SqliteStorage, create_app, listening
from pod_agent.protocol import IdentityKey
from pod_agent.protocol.hub_api import PodRegistration
from pod_agent.protocol.rotation import rotation_statement


def _registration(key: IdentityKey, **fields: Any) -> PodRegistration:
    return PodRegistration(name="clinic", public_key=key.public.to_b64(), schema_public={}, schema_hash="a" * 64,
                           row_count=10, sandbox_level="none", heartbeat_s=1.0, **fields)


async def test_the_hub_moves_a_pods_name_only_with_a_statement_its_held_key_signed() -> None:
    old, new = IdentityKey.generate(), IdentityKey.generate()
    storage = SqliteStorage(":memory:")
    async with listening(create_app(storage), port=0) as url:
        section = HubSection(url=url, unsafe_allow_http=True)
        async with HubClient(section, old) as hub:
            await hub.register(_registration(old))
        async with HubClient(section, new) as hub:
            with pytest.raises(HubRejected, match="registered to another key"):
                await hub.register(_registration(new))
            forged = rotation_statement(pod="clinic", old=new, new=new.public, now=1, overlap_s=10)
            with pytest.raises(HubRejected, match="not signed by the key the hub holds"):
                await hub.register(_registration(new, rotation=forged))
            statement = rotation_statement(pod="clinic", old=old, new=new.public, now=1, overlap_s=10)
            await hub.register(_registration(new, rotation=statement))
        pod = storage.get_pod("clinic")
        assert pod is not None and pod.key_id == new.key_id
    storage.close()
