"""Storing events exactly once: the event id is unique and a repeat is a no-op.

``INSERT … ON CONFLICT (event_id) DO NOTHING RETURNING event_id`` on both databases: the ids
that come back were stored by this call; the rest were already there (a retried batch after a
lost acknowledgement, or two replicas racing on the same batch) and are duplicates. The
violations among the stored rows are counted in the same transaction (storage/counts.py), and a
purge takes off what it deletes.

A row the database itself refuses (PostgreSQL's btree indexes take at most ~2700 bytes per
entry, so a 4096-character rule of multi-byte text fails there while SQLite takes it) must not
fail the batch around it, or the agent would resend that batch for ever:
:func:`insert_events_isolated` retries such a batch row by row, each in a savepoint, and names
the rows refused. Errors of the database as a whole (connection, disk, locks) still fail the
batch, so the agent retries it later and nothing is dead-lettered by mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json
from sqlalchemy import BigInteger, Connection, delete, func, select, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from proscribe.collector.storage import counts
from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import events, host_history


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert event rows (columns of :data:`tables.events` minus ``seq``); returns the ids
    actually stored. ``rows`` must not repeat an id (the caller folds in-batch repeats).

    A row's ``body`` is the event as a JSON object (what ingest builds: it is encoded here,
    once per batch) or already its JSON text; both are stored as the same text."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        ids = conn.execute(_PG_INSERT, {"rows": to_json(rows).decode()}).scalar_one()
        stored = set(ids or ())
    else:
        stmt = (
            dialect_insert(conn, events)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(events.c.event_id)
        )
        result = conn.execute(stmt, [_with_body_text(row) for row in rows])
        stored = {str(row[0]) for row in result}
    counts.add(conn, counts.tally(r for r in rows if r["event_id"] in stored))
    return stored


def body_text(body: Any) -> str:
    """The stored text of an event body: JSON text as given, an object encoded (compact, UTF-8
    as is: the same bytes PostgreSQL keeps from the batch document, see :data:`_PG_INSERT`)."""
    return body if isinstance(body, str) else to_json(body).decode()


def _with_body_text(row: dict[str, Any]) -> dict[str, Any]:
    body = row["body"]
    return row if isinstance(body, str) else {**row, "body": body_text(body)}


# PostgreSQL: one fixed statement taking the whole batch as one JSON document
# (``json_to_recordset``), instead of a multi-row VALUES list. The VALUES list of a 100-event
# batch is a 1,100-placeholder statement that the driver parsed anew for every batch (too long
# for its statement cache): ~40% of the time of a stored batch (bench/fleet.py, docs/scale.md).
# This text is short, cached and prepared by the server after a few uses.
#
# The document is encoded in one call by pydantic-core's JSON encoder (Rust), each body inside
# it as a nested object: a ``json`` value read into a ``text`` column is its input text exactly,
# so the body is encoded once, where it used to be encoded per event and then escaped again as
# a string inside the document (a body given as JSON text is such a string, and stored as
# given). Keys of a row that are not columns are ignored by ``json_to_recordset``. The stored
# ids come back as one array (one row instead of one per event through the result machinery).
_PG_COLUMNS = tuple(c.name for c in events.columns if c.name != "seq")
_PG_INSERT = text(
    "WITH stored AS ("  # noqa: S608 - column names, no input
    f"INSERT INTO events ({', '.join(_PG_COLUMNS)}) "
    f"SELECT {', '.join(_PG_COLUMNS)} FROM json_to_recordset(CAST(:rows AS json)) AS r("
    + ", ".join(
        f"{c.name} {'bigint' if isinstance(c.type, BigInteger) else 'text'}"
        for c in events.columns
        if c.name != "seq"
    )
    + ") ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    ") SELECT array_agg(event_id) FROM stored"
)


# SQLSTATE classes that concern one row's values, not the database: data exception (22),
# integrity constraint (23), program limit exceeded (54: an index entry too large).
_ROW_SQLSTATE_CLASSES = ("22", "23", "54")


def _row_specific(err: DBAPIError) -> bool:
    if isinstance(err, DataError | IntegrityError):
        return True
    sqlstate = getattr(err.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _ROW_SQLSTATE_CLASSES


def _refusal(err: DBAPIError) -> str:
    first = str(err.orig).strip().splitlines()[0] if err.orig is not None else type(err).__name__
    return f"refused by the database: {first[:200]}"


def insert_events_isolated(
    conn: Connection, rows: Sequence[dict[str, Any]]
) -> tuple[set[str], dict[str, str]]:
    """:func:`insert_events`, but a row the database refuses for its own values is left out
    instead of failing the others: returns the ids stored and ``{id: reason}`` refused."""
    try:
        with conn.begin_nested():
            return insert_events(conn, rows), {}
    except DBAPIError as err:
        if not _row_specific(err):
            raise
    stored: set[str] = set()
    refused: dict[str, str] = {}
    for row in rows:
        try:
            with conn.begin_nested():
                stored |= insert_events(conn, [row])
        except DBAPIError as err:
            if not _row_specific(err):
                raise
            refused[str(row["event_id"])] = _refusal(err)
    return stored, refused


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
    gone = conn.execute(
        delete(events)
        .where(events.c.seq.in_(old_events))
        .returning(
            events.c.time_us,
            events.c.kind,
            events.c.action,
            events.c.severity,
            events.c.rule,
            events.c.hostname,
            events.c.username,
            events.c.agent_id,  # part of the counts' key (migration 0008)
        )
    ).all()
    counts.subtract(conn, counts.tally(dict(row._mapping) for row in gone))
    gone_events = len(gone)
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
