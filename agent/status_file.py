"""``state_dir/status.json``: what the running daemon last said about itself.

Written atomically (:func:`proscribe.core.fs.atomic_write`) every few seconds by the daemon and
read by ``proscribe agent status``, which must work whether or not the daemon runs: a status
whose writer pid is gone, or which is older than three write intervals, is shown as not running.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from proscribe.core.fs import atomic_write

__all__ = ["daemon_alive", "read_status", "write_status"]


def write_status(path: Path, status: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(status, indent=2, sort_keys=True, default=str), 0o644)


def read_status(path: Path) -> dict[str, Any] | None:
    """A status JSON object written by the daemon (``status.json``) or its reporter
    (``reporter.json``); ``None`` when missing, unreadable or not an object."""
    try:
        with path.open(encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def daemon_alive(status: dict[str, Any], now: float | None = None) -> bool:
    """The writer is still running and wrote recently."""
    pid = status.get("pid")
    written = status.get("written_at")
    interval = status.get("status_interval", 5.0)
    if not isinstance(pid, int) or not isinstance(written, int | float):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    moment = time.time() if now is None else now
    return moment - written <= 3 * float(interval) + 1
