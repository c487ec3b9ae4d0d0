"""Throwaway databases on the PostgreSQL server the tests and benchmarks use
(127.0.0.1:5432, user postgres, trust authentication; tests needing it carry ``postgres``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@contextlib.contextmanager
def throwaway_database(
    prefix: str = "proscribe_test", template: str | None = None
) -> Iterator[str]:
    """A new, uniquely named database, force-dropped afterwards; yields its SQLAlchemy URL.
    ``template``: the name of a database to copy (``CREATE DATABASE … TEMPLATE``, which needs
    nobody connected to it), e.g. one migrated once instead of migrating each copy."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
