"""How a client reaches the hub: TLS verified by a pin, a CA bundle or the system trust, or plain http.

Owns the one choice of the ``ssl=`` argument that pods (``agent.hubclient``) and modellers
(``modeller.client``) give aiohttp for every request: a pinned certificate sha256 wins over a
CA bundle, which wins over the system trust store. Plain http is allowed to a loopback hub, and
to any other host only with the caller's ``unsafe_allow_http``, logged at each use. Each caller
names its own options (``TlsOptionNames``: pod.toml keys or CLI flags), so an error tells its
reader what to change. What is sent over the connection is ``hubhttp``'s (or ``hub_oneshot``'s,
which honours the same choice). aiohttp is imported only for a pinned certificate, so that a
caller that never opens an aiohttp session does not pay for it.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pod_agent.errors import ConfigError
from pod_agent.protocol.hub_reply import is_loopback

if TYPE_CHECKING:
    import aiohttp

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsOptionNames:
    """How the caller's reader spells each option: ``hub.url`` in pod.toml, ``--hub`` on the command line."""

    url: str
    ca_bundle: str
    pinned_cert_sha256: str
    unsafe_allow_http: str


def tls_for_hub(
    url: str,
    *,
    ca_bundle: Path | None,
    pinned_cert_sha256: str | None,
    unsafe_allow_http: bool,
    names: TlsOptionNames,
) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """The ``ssl=`` argument for every request to the hub at ``url``; ConfigError for an unsafe or bad choice."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        if not is_loopback(parts.hostname or ""):
            if not unsafe_allow_http:
                raise ConfigError(
                    f"{names.url} {url} is plain http to a non-loopback host: use https, or set "
                    f"{names.unsafe_allow_http} (unsafe: tasks and results travel in clear text)"
                )
            _log.warning("%s is set: talking to %s without TLS (unsafe)", names.unsafe_allow_http, url)
        return False
    if parts.scheme != "https":
        raise ConfigError(f"{names.url} {url!r} must start with https:// (or http:// for a loopback hub)")
    if pinned_cert_sha256:
        import aiohttp  # only a pin needs it (see above)

        try:
            return aiohttp.Fingerprint(bytes.fromhex(pinned_cert_sha256.replace(":", "")))
        except ValueError as exc:
            raise ConfigError(
                f"{names.pinned_cert_sha256} {pinned_cert_sha256!r} is not the 64-hex sha256 of a DER certificate"
            ) from exc
    if ca_bundle is not None:
        try:
            return ssl.create_default_context(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{names.ca_bundle} {ca_bundle} cannot be loaded: {exc}") from exc
    return ssl.create_default_context()
