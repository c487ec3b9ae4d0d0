"""An online backup of a SQLite collector database (``proscribe collector backup``).

SQLite's backup API copies the database page by page from a read transaction: in WAL mode the
collector keeps writing meanwhile, and the copy is the database as it was when the backup
began (one step, so it never restarts). The copy is written beside the target, checked with
``PRAGMA integrity_check``, made 0600 (it is evidence) and only then renamed into place.
PostgreSQL is backed up with its own tools (``pg_dump``; docs/operations.md).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from proscribe.collector.storage.database import EVIDENCE_MODE, Database
from proscribe.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    events: int
    bytes: int


def backup_sqlite(db: Database, target: Path) -> BackupResult:
    if not db.is_sqlite:
        raise ConfigError(
            "collector backup: database.url is PostgreSQL (fix: back it up with "
            "pg_dump --format=custom; see docs/operations.md)"
        )
    if target.exists():
        raise ConfigError(f"collector backup: {target} exists (fix: give a new file name)")
    if not target.parent.is_dir():
        raise ConfigError(
            f"collector backup: the folder {target.parent} does not exist (fix: create it)"
        )
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, EVIDENCE_MODE)
    os.close(fd)
    raw = db.engine.raw_connection()
    try:
        source = raw.driver_connection
        assert isinstance(source, sqlite3.Connection)
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)  # one step: a consistent snapshot, writers go on (WAL)
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise ConfigError(f"collector backup: the copy fails integrity_check: {verdict}")
            events = int(copy.execute("SELECT count(*) FROM events").fetchone()[0])
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        raw.close()
    os.chmod(partial, EVIDENCE_MODE)
    os.replace(partial, target)
    return BackupResult(target, events, target.stat().st_size)
