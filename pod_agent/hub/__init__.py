"""Reference hub: registry of pods and modellers, task and result queues, blobs.

Not trusted by pods (they verify every task themselves). ``create_app`` builds
the aiohttp application over any ``Storage``; ``serve`` runs it with SQLite.
``admission`` decides who may register (open, token, approve), ``limits`` how much
one key may send and store.
"""

from pod_agent.hub.serving import listening, serve, server_tls_context
from pod_agent.hub.server import create_app
from pod_agent.hub.sqlite import SqliteStorage
from pod_agent.hub.storage import Storage, StorageConflict

__all__ = ["SqliteStorage", "Storage", "StorageConflict", "create_app", "listening", "serve", "server_tls_context"]
