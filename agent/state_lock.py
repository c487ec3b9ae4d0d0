"""One agent per state directory: an exclusive lock on ``state_dir/agent.lock``.

Two daemons on one state directory share a spool, an agent key and a policy state, and corrupt
delivery (both number events from the same counter, both send and acknowledge the same rows).
``proscribe agent run`` takes this lock before it builds anything; a second one is refused with
one line naming the first one's pid, which the holder writes into the file. ``agent status``
holds the same lock for a moment while it reads the directory without a running agent (opening
the policy store tidies the directory), so an agent starting meanwhile waits a few seconds for
it instead of racing with it.

The lock is the kernel's (``flock`` on POSIX, ``msvcrt.locking`` on Windows): it is released
when the process ends however it ends, so a crash never leaves a stale lock, and the file
itself may stay behind.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import TracebackType

from proscribe.core.errors import ConfigError, ProscribeError

__all__ = ["LOCK_NAME", "StateDirBusy", "StateLock"]

LOCK_NAME = "agent.lock"


class StateDirBusy(ProscribeError):
    """Another agent holds the state directory (exit 2: a usage error, nothing was started)."""


class StateLock:
    """Hold ``state_dir/agent.lock`` from :meth:`acquire` until :meth:`release` or exit."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, *, write_pid: bool = True, wait: float = 0.0) -> StateLock:
        """Take the lock or raise StateDirBusy naming the holder. ``write_pid=False``: a reader
        such as ``agent status``, which holds it for a moment to read the directory in peace;
        ``wait``: keep trying that long (an agent starting while such a reader holds it)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise ConfigError(
                f"agent.state_dir {self.state_dir}: cannot create the lock file {self.path}: "
                f"{err.strerror} (fix: create the directory or choose a writable one)"
            ) from err
        deadline = time.monotonic() + wait
        while not (locked := _try_lock(fd)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not locked:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process (pid not yet written)"
            raise StateDirBusy(
                f"another agent ({who}) is already running on state directory "
                f"{self.state_dir} (fix: stop it first, e.g. 'systemctl stop proscribe-agent', "
                "or give this one its own agent.state_dir)"
            )
        if write_pid:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> int | None:
        """The pid the holder wrote (None when unreadable), without taking the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            return _read_pid(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:  # Windows: the holder's locked byte cannot be read
        return None
    return int(text) if text.isdigit() else None


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
