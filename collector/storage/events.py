"""Storing events exactly once: the event id is unique and a repeat is a no-op.

``INSERT … ON CONFLICT (event_id) DO NOTHING RETURNING event_id`` on both databases: the ids
that come back were stored by this call; the rest were already there (a retried batch after a
lost acknowledgement, or two replicas racing on the same batch) and are duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import events
from sqlalchemy import Connection, func, select


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
