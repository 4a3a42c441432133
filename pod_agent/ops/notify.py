"""sd_notify client: tell systemd (or anyone owning NOTIFY_SOCKET) how the agent is doing.

Owns the datagram protocol of sd_notify(3): READY=1, STATUS=..., WATCHDOG=1,
STOPPING=1 sent to the unix socket named by NOTIFY_SOCKET (a path, or an
abstract name written with a leading '@'), and the watchdog interval derived
from WATCHDOG_USEC/WATCHDOG_PID. Without NOTIFY_SOCKET every call is a no-op, so
the daemon calls it unconditionally. When to send what is the daemon's choice;
``watchdog_loop`` pings from the event loop so a stalled loop stops the pings
and systemd restarts the agent. No dependency on python-systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

_log = logging.getLogger(__name__)

# systemd's own advice: ping at half the watchdog timeout so one late tick is not fatal.
WATCHDOG_PING_FRACTION = 0.5
# A STATUS= line is shown by `systemctl status`; keep it to one short line.
MAX_STATUS_CHARS = 200


def _socket_address(raw: str) -> str | bytes:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    """Sends sd_notify datagrams to one socket, or does nothing when there is none."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID as systemd sets them.

        The watchdog applies only when WATCHDOG_PID is unset or names this process.
        ``unset_environment`` removes the variables from ``os.environ`` so child
        processes cannot inherit the socket.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        usec: int | None = None
        raw_usec, raw_pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if raw_usec and raw_usec.isdigit() and (not raw_pid or raw_pid == str(os.getpid())):
            usec = int(raw_usec)
        if unset_environment:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between WATCHDOG=1 pings, or None when no watchdog is armed."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 1_000_000 * WATCHDOG_PING_FRACTION

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when it was delivered.

        A failure is logged once and otherwise ignored: a missing supervisor must
        not take the agent down.
        """
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, _socket_address(self.address))
        except OSError as exc:
            if not self._warned:
                _log.warning("sd_notify to %s failed (%s); continuing without it", self.address, exc.strerror)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.send(*lines)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.send(*lines)

    async def watchdog_loop(self) -> None:
        """Ping WATCHDOG=1 from the event loop until cancelled; returns at once without a watchdog."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_STATUS_CHARS]


__all__ = ["MAX_STATUS_CHARS", "WATCHDOG_PING_FRACTION", "Notifier"]
