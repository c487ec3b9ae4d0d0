"""Storing events exactly once: the event id is unique and a repeat is a no-op.

``INSERT … ON CONFLICT (event_id) DO NOTHING RETURNING event_id`` on both databases: the ids
that come back were stored by this call; the rest were already there (a retried batch after a
lost acknowledgement, or two replicas racing on the same batch) and are duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, select

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import events, host_history


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert event rows (columns of :data:`tables.events` minus ``seq``); returns the ids
    actually stored. ``rows`` must not repeat an id (the caller folds in-batch repeats)."""
    if not rows:
        return set()
    stmt = (
        dialect_insert(conn, events)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(events.c.event_id)
    )
    result = conn.execute(stmt, list(rows))
    return {str(row[0]) for row in result}


def existing_event_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    rows = conn.execute(select(events.c.event_id).where(events.c.event_id.in_(list(ids))))
    return {str(r[0]) for r in rows}


def count_events(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


PURGE_CHUNK = 5000


def count_older(conn: Connection, cutoff_us: int) -> tuple[int, int]:
    """``(events, host history rows)`` stored with a time before ``cutoff_us``."""
    n_events = conn.execute(
        select(func.count()).select_from(events).where(events.c.time_us < cutoff_us)
    ).scalar_one()
    n_history = conn.execute(
        select(func.count()).select_from(host_history).where(host_history.c.time_us < cutoff_us)
    ).scalar_one()
    return int(n_events), int(n_history)


def purge_chunk(conn: Connection, cutoff_us: int, chunk: int = PURGE_CHUNK) -> tuple[int, int]:
    """Delete at most ``chunk`` events and ``chunk`` history rows older than ``cutoff_us`` (the
    caller commits each chunk, so a purge of millions never holds the write lock for long).
    Returns what was deleted; ``(0, 0)`` when nothing is left."""
    old_events = (
        select(events.c.seq).where(events.c.time_us < cutoff_us).limit(chunk).scalar_subquery()
    )
    gone_events = conn.execute(delete(events).where(events.c.seq.in_(old_events))).rowcount
    old_history = (
        select(host_history.c.seq)
        .where(host_history.c.time_us < cutoff_us)
        .limit(chunk)
        .scalar_subquery()
    )
    gone_history = conn.execute(
        delete(host_history).where(host_history.c.seq.in_(old_history))
    ).rowcount
    return int(gone_events or 0), int(gone_history or 0)
