"""Files that readers and crashes see whole: the one atomic write of the project.

:func:`atomic_write` writes a temp file in the target's directory (so the rename cannot cross a
filesystem), fsyncs it, renames it over the target and fsyncs the directory, so that after a crash
or ``kill -9`` the path holds the old bytes or the new ones, never a mix, and the rename itself is
durable. The temp file is removed when anything fails. Temp files left by a process killed between
create and rename are named ``.NAME.*.tmp``; :func:`remove_stale_temp_files` clears them at start.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "TEMP_SUFFIX",
    "atomic_write",
    "fsync_directory",
    "private_sqlite_file",
    "remove_stale_temp_files",
]

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8), permissions ``mode``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if os.name == "posix":
                os.fchmod(fh.fileno(), mode)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or create in ``directory`` durable (a no-op where directories cannot be
    opened, i.e. Windows)."""
    if os.name != "posix":
        return
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_stale_temp_files(directory: Path) -> int:
    """Delete the temp files of writes that were killed before their rename; returns how many."""
    removed = 0
    for tmp in directory.glob(f".*{TEMP_SUFFIX}"):
        try:
            tmp.unlink()
            removed += 1
        except OSError as err:
            log.warning("%s: cannot remove leftover temp file: %s", tmp, err)
    return removed


def private_sqlite_file(path: Path, mode: int = 0o600) -> list[tuple[Path, int]]:
    """Make an SQLite database file that holds evidence readable by its owner only.

    Creates ``path`` with ``mode`` when it does not exist (SQLite gives its ``-wal`` and ``-shm``
    files the database file's permissions), and brings an existing database and its companions
    down to ``mode``. Returns the files it tightened with their old modes, for the caller to log;
    a file that is not ours to change is left and returned with a negative mode. Raises
    ``OSError`` when the file cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return []
    changed: list[tuple[Path, int]] = []
    if os.name != "posix":
        return changed
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            old = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if not old & ~mode:
            continue
        try:
            os.chmod(file, mode)
        except PermissionError:
            changed.append((file, -old))
        else:
            changed.append((file, old))
    return changed
