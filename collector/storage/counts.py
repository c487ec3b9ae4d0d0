"""Violation counts every replica agrees on: a table kept at ingest, in the events' transaction.

Each stored violation adds one to its row of :data:`tables.violation_counts` (UTC day × kind ×
action × severity × rule × host × user × agent) by ``INSERT … ON CONFLICT DO UPDATE SET n = n +
excluded.n`` in the same transaction as the event insert, on SQLite and PostgreSQL alike: a
duplicate event id stores nothing and counts nothing, a rolled-back batch counts nothing, and
concurrent writers on PostgreSQL each add under the row lock (keys are upserted in sorted order
so two batches never wait on each other crosswise). A purge subtracts what it deleted in the
same transaction as the delete. Migration 0007 fills the table from the events already stored
(0008 refills it with the agent in the key: the report's top hosts are grouped by agent).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, and_, delete, func, select, text, update

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import violation_counts as vc

DAY_US = 86_400 * 1_000_000
KEY_CHARS = 128  # = the longest policy rule id (core/policy/_checks.py _ID): rules match exactly
VIOLATION_KINDS = ("process", "dns", "file", "model", "tamper")

Key = tuple[int, str, str, str, str, str, str, str]


def key_of(row: Mapping[str, Any]) -> Key | None:
    """The counts row an event belongs to, or ``None`` when it is not a violation."""
    if row["kind"] not in VIOLATION_KINDS:
        return None
    return (
        int(row["time_us"]) // DAY_US,
        str(row["kind"]),
        str(row["action"]),
        str(row["severity"]),
        str(row.get("rule") or "")[:KEY_CHARS],
        str(row.get("hostname") or "")[:KEY_CHARS],
        str(row.get("username") or "")[:KEY_CHARS],
        str(row["agent_id"]),  # the authenticated agent: never empty, at most 64 characters
    )


def tally(rows: Iterable[Mapping[str, Any]]) -> Counter[Key]:
    found: Counter[Key] = Counter()
    for row in rows:
        key = key_of(row)
        if key is not None:
            found[key] += 1
    return found


_COLUMNS = ("day", "kind", "action", "severity", "rule", "hostname", "username", "agent_id")


def add(conn: Connection, counts: Counter[Key]) -> None:
    """Add ``counts`` to the table (in the caller's transaction)."""
    if not counts:
        return
    ordered = sorted(counts.items())
    if conn.dialect.name == "postgresql":
        # One statement and one round trip for the whole batch: the keys as arrays, inserted
        # in key order (ORDER BY: PostgreSQL takes the row locks in that order, so two batches
        # never wait on each other crosswise). Each key appears once (a Counter), as ON
        # CONFLICT DO UPDATE requires. Was one execution per key: ~15% of an ingest.
        params: dict[str, list[Any]] = {
            name: [key[i] for key, _n in ordered] for i, name in enumerate(_COLUMNS)
        }
        params["n"] = [n for _key, n in ordered]
        conn.execute(_PG_ADD, params)
        return
    values = [{**dict(zip(_COLUMNS, key, strict=True)), "n": n} for key, n in ordered]
    # One statement, executed for every row in key order (the lock order above). A fixed
    # statement is compiled once and cached: a VALUES list of varying length would be
    # compiled per batch.
    stmt = dialect_insert(conn, vc)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_COLUMNS), set_={"n": vc.c.n + stmt.excluded.n}
    )
    conn.execute(stmt, values)


_PG_ADD = text(
    f"INSERT INTO violation_counts ({', '.join(_COLUMNS)}, n) "  # noqa: S608 - constants
    "SELECT * FROM unnest(CAST(:day AS integer[]), CAST(:kind AS text[]), "
    "CAST(:action AS text[]), CAST(:severity AS text[]), CAST(:rule AS text[]), "
    "CAST(:hostname AS text[]), CAST(:username AS text[]), CAST(:agent_id AS text[]), "
    "CAST(:n AS bigint[])) "
    f"AS k({', '.join(_COLUMNS)}, n) ORDER BY {', '.join(_COLUMNS)} "
    f"ON CONFLICT ({', '.join(_COLUMNS)}) DO UPDATE SET n = violation_counts.n + excluded.n"
)


def subtract(conn: Connection, counts: Counter[Key]) -> None:
    """Take ``counts`` off the table (a purge), dropping rows that reach zero."""
    for key, n in sorted(counts.items()):
        match = and_(*(vc.c[name] == value for name, value in zip(_COLUMNS, key, strict=True)))
        conn.execute(update(vc).where(match).values(n=vc.c.n - n))
        conn.execute(delete(vc).where(match, vc.c.n <= 0))


def total(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.sum(vc.c.n), 0))).scalar_one())


def recount(conn: Connection) -> int:
    """Rebuild the whole table from the events in one grouped pass (the same SQL as migration
    0008's backfill): for bulk loads that write the events table directly, such as the
    benchmarks' fixtures. Returns the number of violations counted."""
    kinds = ", ".join(f"'{k}'" for k in VIOLATION_KINDS)
    conn.execute(delete(vc))
    conn.execute(
        text(
            "INSERT INTO violation_counts"  # noqa: S608 - constants only, no input
            "  (day, kind, action, severity, rule, hostname, username, agent_id, n) "
            f"SELECT CAST(time_us / {DAY_US} AS INTEGER) AS d, kind, action, severity, "
            f"substr(coalesce(rule, ''), 1, {KEY_CHARS}) AS r, "
            f"substr(coalesce(hostname, ''), 1, {KEY_CHARS}) AS h, "
            f"substr(coalesce(username, ''), 1, {KEY_CHARS}) AS u, agent_id, count(*) "
            f"FROM events WHERE kind IN ({kinds}) "
            "GROUP BY d, kind, action, severity, r, h, u, agent_id"
        )
    )
    return total(conn)
