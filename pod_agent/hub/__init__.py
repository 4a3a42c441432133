"""Reference hub: registry of pods and modellers, task and result queues, blobs.

Not trusted by pods (they verify every task themselves). ``create_app`` builds
the aiohttp application over any ``Storage``; ``serve`` runs it on SQLite, or on PostgreSQL
(``PostgresStorage``) as one of several processes (``PostgresCluster``).
``admission`` decides who may register (open, token, approve), ``limits`` how much
one key may send and store, ``status`` what the operator's read-only page shows.
"""

from pod_agent.hub.admission import DEFAULT_TOKEN_TTL_S, REGISTRATION_POLICIES, RegistrationPolicy, invite
from pod_agent.hub.limits import (
    DEFAULT_BLOB_GRACE_S,
    DEFAULT_BLOB_QUOTA_BYTES,
    DEFAULT_BLOB_QUOTA_COUNT,
    DEFAULT_GC_INTERVAL_S,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_S,
    HubLimits,
)
from pod_agent.hub.server import create_app
from pod_agent.hub.serving import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    blob_dir_for,
    is_postgres_url,
    listening,
    open_storage,
    serve,
    server_tls_context,
)
from pod_agent.hub.sqlite import SqliteStorage
from pod_agent.hub.status import StatusPage
from pod_agent.hub.storage import Storage, StorageConflict
from pod_agent.lazy import lazy_attributes

# The PostgreSQL driver loads only for a hub on PostgreSQL.
_LAZY_HOME = {"PostgresCluster": "pod_agent.hub.postgres", "PostgresStorage": "pod_agent.hub.postgres"}

__all__ = [
    "DEFAULT_BLOB_GRACE_S",
    "DEFAULT_BLOB_QUOTA_BYTES",
    "DEFAULT_BLOB_QUOTA_COUNT",
    "DEFAULT_GC_INTERVAL_S",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_PER_S",
    "DEFAULT_TOKEN_TTL_S",
    "REGISTRATION_POLICIES",
    "HubLimits",
    "PostgresCluster",
    "PostgresStorage",
    "RegistrationPolicy",
    "SqliteStorage",
    "StatusPage",
    "Storage",
    "StorageConflict",
    "blob_dir_for",
    "create_app",
    "invite",
    "is_postgres_url",
    "listening",
    "open_storage",
    "serve",
    "server_tls_context",
]

__getattr__ = lazy_attributes(__name__, _LAZY_HOME)
