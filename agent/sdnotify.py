"""systemd's notify protocol (``sd_notify(3)``), spoken without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process it
expects the keep-alives from). The daemon sends ``READY=1`` once it enforces, ``WATCHDOG=1``
at half the watchdog period while it is healthy, and ``STOPPING=1`` on the way out; a daemon
that hangs stops sending keep-alives and systemd restarts it (``Restart=on-failure``).

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. Sending never raises: a notify
socket that went away must not stop enforcement.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        if raw.isdigit() and int(raw) > 0:
            usec = int(raw)
            pid = env.get("WATCHDOG_PID", "")
            if pid.isdigit() and int(pid) != os.getpid():
                usec = None  # the keep-alives are expected from another process
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives (half the period, as sd_watchdog_enabled advises)."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, message: str) -> bool:
        """Send one datagram (``KEY=VALUE`` lines); False when not under systemd or it failed."""
        if self._address is None:
            return False
        target = self._address
        if target.startswith("@"):
            target = "\0" + target[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode("utf-8", "replace"), target)
            return True
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed: %s (further failures not logged)",
                            self._address, err)  # fmt: skip
            return False
