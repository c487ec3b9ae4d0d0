"""Opening the collector's database: one engine per process, SQLite or PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged event must survive a power
loss, because the agent deletes it from its spool on the acknowledgement) and a busy timeout.
Writers in one process take a lock first: SQLite allows one writer at a time anyway, and
queueing on a Python lock is far cheaper than SQLite's sleeping busy handler.

The SQLite file is evidence (command lines, user names): it is created mode 0600, and an
existing one (with its ``-wal`` and ``-shm``, which SQLite creates with the database's mode) is
brought down to 0600 with a warning. Its folder must exist (a typo in the path is an error
naming the folder, not a new tree somewhere), and a file that is not a SQLite database is one
line naming it, not a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from proscribe.core.errors import ConfigError
from proscribe.core.fs import private_sqlite_file

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
EVIDENCE_MODE = 0o600


class Database:
    """An engine plus the knowledge of which dialect it speaks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._write_lock = threading.Lock() if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A transaction for writing; committed on success, rolled back on any exception.

        ``durable=False`` commits without waiting for fsync: for heartbeats and nonces, whose
        loss in a power cut costs nothing, while acknowledged events keep full durability. A
        later durable commit syncs the earlier ones too (one WAL). SQLite: ``synchronous =
        NORMAL`` for the transaction; PostgreSQL: ``SET LOCAL synchronous_commit = off`` (the
        commit returns before its WAL is flushed; a crash of the server can lose the last
        fraction of a second of such commits, never a durable one, and never half of one).
        """
        lock = self._write_lock or contextlib.nullcontext()
        with lock, self.engine.connect() as conn:
            relaxed = self.is_sqlite and not durable
            if relaxed:
                conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                conn.commit()  # end SQLAlchemy's autobegun transaction around the pragma
            try:
                with conn.begin():
                    if not durable and not self.is_sqlite:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    yield conn
            finally:
                if relaxed:
                    conn.exec_driver_sql("PRAGMA synchronous=FULL")
                    conn.commit()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str, *, pool_size: int = 8) -> Database:
    """Create the engine for ``url``; the schema is made by :func:`migrate.upgrade`."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ConfigError(f"database.url {url!r} is not a database URL ({err})") from err
    kwargs: dict[str, Any] = {}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        if parsed.database and parsed.database != ":memory:":
            prepare_sqlite_file(Path(parsed.database))
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        kwargs["pool_size"] = pool_size
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        kwargs["pool_pre_ping"] = True
    engine = create_engine(parsed, **kwargs)
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    db = Database(engine)
    try:
        with db.engine.connect():
            pass
    except DBAPIError as err:
        engine.dispose()
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        if sqlite and "not a database" in reason:
            raise ConfigError(
                f"database.url: {parsed.database} is not a SQLite database (fix: point "
                "database.url at the collector's database, or at a new file name)"
            ) from err
        raise ConfigError(
            f"database.url: cannot connect: {reason} (fix: check the URL and that the "
            "database server is running)"
        ) from err
    return db


def prepare_sqlite_file(path: Path) -> None:
    """The folder exists; the file exists with mode 0600 (created so, or brought down)."""
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"database.url: the folder {folder} does not exist (fix: create it, owned by the "
            "collector's user with mode 0700, or correct the path)"
        )
    if path.exists():
        _check_sqlite_header(path)
    try:
        changed = private_sqlite_file(path, EVIDENCE_MODE)
    except OSError as err:
        raise ConfigError(
            f"database.url: cannot create {path}: {err.strerror} (fix: choose a folder the "
            "collector's user may write)"
        ) from err
    for file, mode in changed:
        if mode < 0:
            log.warning("%s is mode %o, readable by others, and not ours to change", file, -mode)
        else:
            log.warning("%s was mode %o; now %o (it holds evidence)", file, mode, EVIDENCE_MODE)


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_header(path: Path) -> None:
    """An existing file must be a SQLite database (or empty) before anything touches it."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as err:
        raise ConfigError(
            f"database.url: cannot read {path}: {err.strerror} (fix: give the collector's user "
            "access to it)"
        ) from err
    if head and head != SQLITE_HEADER:
        raise ConfigError(
            f"database.url: {path} is not a SQLite database (fix: point database.url at the "
            "collector's database, or at a new file name)"
        )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
