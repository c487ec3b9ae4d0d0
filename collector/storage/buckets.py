"""Token buckets in the database, so every replica draws from the same ones (enrollment and
sign-in throttles). One row per key; a check locks it (``SELECT … FOR UPDATE`` on PostgreSQL,
the write lock on SQLite), refills it for the time since its last use, and takes a token.
A missing row is a full bucket; rows untouched for a day are deleted (full again by then for
any rate above burst per day)."""

from __future__ import annotations

from sqlalchemy import Connection, delete, select, update

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import rate_buckets

MAX_KEY = 300
IDLE_US = 86_400 * 1_000_000
NEVER = 3600.0  # the wait reported by a bucket that never refills (rate 0)


def _level(tokens: float, stamp_us: int, rate: float, burst: float, now_us: int) -> float:
    return min(burst, tokens + max(0, now_us - stamp_us) / 1e6 * rate)


def _wait(level: float, rate: float) -> float:
    if level >= 1:
        return 0.0
    return (1 - level) / rate if rate > 0 else NEVER


def take(conn: Connection, key: str, rate: float, burst: float, now_us: int) -> float:
    """Take a token from ``key``'s bucket: 0 if taken, else the seconds until one will be."""
    key = key[:MAX_KEY]
    conn.execute(
        dialect_insert(conn, rate_buckets)
        .values(key=key, tokens=float(burst), stamp_us=now_us)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = conn.execute(
        select(rate_buckets.c.tokens, rate_buckets.c.stamp_us)
        .where(rate_buckets.c.key == key)
        .with_for_update()
    ).one()
    level = _level(float(row.tokens), int(row.stamp_us), rate, burst, now_us)
    wait = _wait(level, rate)
    conn.execute(
        update(rate_buckets)
        .where(rate_buckets.c.key == key)
        .values(tokens=level - 1 if not wait else level, stamp_us=max(now_us, int(row.stamp_us)))
    )
    return wait


def peek(conn: Connection, key: str, rate: float, burst: float, now_us: int) -> float:
    """0 if ``key``'s bucket has a token now, else the seconds until it will; takes nothing."""
    row = conn.execute(
        select(rate_buckets.c.tokens, rate_buckets.c.stamp_us).where(
            rate_buckets.c.key == key[:MAX_KEY]
        )
    ).first()
    if row is None:
        return _wait(float(burst), rate)
    return _wait(_level(float(row.tokens), int(row.stamp_us), rate, burst, now_us), rate)


def purge_idle(conn: Connection, now_us: int) -> int:
    result = conn.execute(delete(rate_buckets).where(rate_buckets.c.stamp_us < now_us - IDLE_US))
    return int(result.rowcount or 0)
