"""The collector's storage layer: schema, migrations and the queries every route and the
dashboard use. Functions take a SQLAlchemy ``Connection`` (the caller owns the transaction)
and times as integer microseconds, so tests inject the clock."""

from __future__ import annotations

from proscribe.collector.storage.database import Database, open_database
from proscribe.collector.storage.migrate import upgrade

__all__ = ["Database", "open_database", "to_us", "upgrade"]


def to_us(seconds: float) -> int:
    """Seconds since the epoch → integer microseconds, the storage layer's time unit."""
    return int(seconds * 1_000_000)
