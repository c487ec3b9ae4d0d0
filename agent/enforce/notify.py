"""Tell the user why a program was stopped.

The log always gets a WARNING line. A desktop notice is attempted only when it can work: the
feature is enabled, ``notify-send`` is installed, and the user's session is reachable — a
``DBUS_SESSION_BUS_ADDRESS`` or ``DISPLAY`` read from the blocked process's environment
(``/proc/PID/environ``, captured before the kill) or, failing that, from the agent's own. The
notice runs as the process's user so it reaches that user's bus, and never blocks the agent.
Everything else is a quiet no-op, counted in :attr:`Notifier.skipped`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Notifier", "session_env"]

log = logging.getLogger(__name__)

_SESSION_KEYS = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR")


def session_env(pid: int, procfs: Path = Path("/proc")) -> dict[str, str]:
    """The desktop-session variables of ``pid`` (empty when unreadable)."""
    try:
        raw = (procfs / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        name = key.decode("ascii", "replace")
        if sep and name in _SESSION_KEYS:
            env[name] = value.decode("utf-8", "replace")
    return env


class Notifier:
    def __init__(
        self,
        enabled: bool = True,
        *,
        command: str = "notify-send",
        own_env: Mapping[str, str] | None = None,
    ) -> None:
        self.enabled = enabled
        self.command = shutil.which(command) if enabled else None
        self.own_env = dict(os.environ if own_env is None else own_env)
        self.sent = 0
        self.skipped: Counter[str] = Counter()

    def tell(
        self,
        title: str,
        message: str,
        *,
        env: Mapping[str, str] | None = None,
        uid: int | None = None,
    ) -> bool:
        """Log the notice; show it on the desktop when possible. True when a notice was sent."""
        log.warning("%s: %s", title, message)
        if not self.enabled:
            self.skipped["disabled"] += 1
            return False
        if self.command is None:
            self.skipped["no_notify_send"] += 1
            return False
        session = {k: v for k, v in (env or {}).items() if k in _SESSION_KEYS}
        if not ("DBUS_SESSION_BUS_ADDRESS" in session or "DISPLAY" in session):
            session = {k: v for k, v in self.own_env.items() if k in _SESSION_KEYS}
        if not ("DBUS_SESSION_BUS_ADDRESS" in session or "DISPLAY" in session):
            self.skipped["no_session"] += 1
            return False
        session["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        run_as = uid if (uid is not None and os.geteuid() == 0 and uid != 0) else None
        try:
            proc = subprocess.Popen(
                [self.command, "--app-name=Proscribe", "--urgency=critical", title, message],
                env=session,
                user=run_as,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as err:
            self.skipped["error"] += 1
            log.info("desktop notice not shown: %s", err)
            return False
        threading.Thread(target=_reap, args=(proc,), name="proscribe-notify", daemon=True).start()
        self.sent += 1
        return True


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
