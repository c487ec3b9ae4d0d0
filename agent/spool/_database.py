"""Opening the spool's SQLite file: pragmas, schema, and replacing a corrupt file."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.core.errors import SpoolError
from proscribe.core.fs import private_sqlite_file

log = logging.getLogger(__name__)

# Result codes that mean "this file is damaged", as opposed to busy, locked or unreadable
# (those must never cost a healthy spool its contents).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class _Corrupt(Exception):
    """The file opened but is not a sound spool database."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id         TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    rule_key   TEXT NOT NULL,
    fold_key   INTEGER,
    state      TEXT NOT NULL DEFAULT 'pending',
    count      INTEGER NOT NULL DEFAULT 1,
    size       INTEGER NOT NULL,
    body       TEXT NOT NULL,
    created    REAL NOT NULL,
    state_time REAL,
    error      TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_state_seq ON events(state, seq);
DROP INDEX IF EXISTS events_fold;
CREATE INDEX IF NOT EXISTS events_fold_seq ON events(fold_key, state, seq);
CREATE INDEX IF NOT EXISTS events_rule ON events(rule_key, state, seq);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, state, seq);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sightings (
    key     TEXT PRIMARY KEY,
    boot_id TEXT NOT NULL,
    seen    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sightings_seen ON sightings(seen);
"""


def _connect(path: Path) -> sqlite3.Connection:
    # Events hold command lines and user names: the file (and so its -wal and -shm, which
    # SQLite creates with the database's permissions) is the agent's alone.
    try:
        tightened = private_sqlite_file(path, 0o600)
    except OSError as err:
        raise SpoolError(f"{path}: cannot create the spool ({err.strerror})") from err
    for file, mode in tightened:
        if mode < 0:
            log.warning("%s is mode %o, readable by others, and not ours to change", file, -mode)
        else:
            log.warning("%s was mode %o; now 600 (it holds evidence)", file, mode)
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so a commit is exactly
    # where we say it is. check_same_thread=False: one connection guarded by the Spool's lock.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    try:
        # WAL + FULL: a committed transaction survives power loss, not only a process crash
        # (NORMAL in WAL mode may lose the last transactions on power loss).
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode=WAL refused (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        # After a checkpoint the WAL is truncated to this, so the file set stays near the cap.
        conn.execute("PRAGMA journal_size_limit=8388608")
        conn.execute("PRAGMA foreign_keys=OFF")
        check = conn.execute("PRAGMA integrity_check").fetchall()
        if [row[0] for row in check] != ["ok"]:
            raise _Corrupt(f"integrity_check: {check[:3]!r}")
        conn.executescript(SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _move_aside(path: Path, now: float) -> Path:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    path.rename(target)
    # The WAL and shared-memory files belong to the corrupt database; keep them beside it.
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


def open_database(
    path: Path, now: float | None = None, *, recover: bool = True
) -> tuple[sqlite3.Connection, Path | None]:
    """Open (or create) the spool; a corrupt file is moved aside and replaced.

    Returns the connection and, when a corrupt file was replaced, where it was moved. With
    ``recover=False`` (readers such as ``agent events`` beside a running daemon) a corrupt file
    is left alone and reported as a SpoolError.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpoolError(f"{path.parent}: cannot create the spool directory ({err})") from err
    try:
        return _connect(path), None
    except _Corrupt as err:
        reason = str(err)
    except sqlite3.DatabaseError as err:
        code = getattr(err, "sqlite_errorcode", None)
        if code not in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or not path.exists():
            raise SpoolError(f"{path}: cannot open the spool ({err}); check permissions") from err
        reason = str(err)
    if not recover:
        raise SpoolError(
            f"{path}: the spool is corrupt ({reason}); the agent moves it aside and starts a "
            "fresh one when it next starts (fix: restart the agent)"
        )
    try:
        moved = _move_aside(path, time.time() if now is None else now)
    except OSError as err:
        raise SpoolError(f"{path}: corrupt spool cannot be moved aside ({err})") from err
    log.error(
        "spool %s is corrupt (%s); moved it to %s and started a fresh one", path, reason, moved
    )
    try:
        return _connect(path), moved
    except sqlite3.Error as err:
        raise SpoolError(f"{path}: cannot create a fresh spool ({err})") from err


_SALVAGE_STEP = 200
_SALVAGE_MAX_ERRORS = 1000


def salvage_pending(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Best effort: the unsent events still readable in a corrupt spool moved aside.

    The file is opened read-only and its ``events`` table walked by rowid in small steps; a step
    that hits a damaged page is skipped, so one bad page costs the rows on it, not the file.
    Returns ``(events, unreadable)`` where ``unreadable`` counts skipped steps and bodies that
    are not events. Never raises: a file that is not a database at all yields nothing.
    """
    found: list[dict[str, Any]] = []
    unreadable = 0
    for uri in (f"file:{path}?mode=ro", f"file:{path}?immutable=1"):
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=1)
        except sqlite3.Error:
            continue
        try:
            try:
                # A damaged schema entry (an index's root page) must not stop reading the
                # table: with writable_schema the schema parser skips what it cannot parse.
                conn.execute("PRAGMA writable_schema = ON")
            except sqlite3.Error:
                pass
            try:
                top = conn.execute("SELECT MAX(rowid) FROM events").fetchone()[0]
            except sqlite3.Error:
                top = None
            if top is None:
                continue
            errors = 0
            start = 0
            while start <= int(top) and errors < _SALVAGE_MAX_ERRORS:
                try:
                    # NOT INDEXED: the table's own b-tree by rowid; a damaged index (what
                    # integrity_check most often finds) cannot hide or invent rows.
                    rows = conn.execute(
                        "SELECT body FROM events NOT INDEXED WHERE rowid > ? AND rowid <= ? "
                        "AND state = 'pending' ORDER BY rowid",
                        (start, start + _SALVAGE_STEP),
                    ).fetchall()
                except sqlite3.Error:
                    errors += 1
                    unreadable += 1
                    rows = []
                for (body,) in rows:
                    try:
                        event = json.loads(body)
                    except (TypeError, ValueError):
                        event = None
                    if isinstance(event, dict) and isinstance(event.get("id"), str):
                        found.append(event)
                    else:
                        unreadable += 1
                start += _SALVAGE_STEP
            return found, unreadable
        finally:
            conn.close()
    return found, unreadable
