"""Violation counts every replica agrees on: a table kept at ingest, in the events' transaction.

Each stored violation adds one to its row of :data:`tables.violation_counts` (UTC day × kind ×
action × severity × rule × host × user × agent) by ``INSERT … ON CONFLICT DO UPDATE SET n = n +
excluded.n`` in the same transaction as the event insert, on SQLite and PostgreSQL alike: a
duplicate event id stores nothing and counts nothing, a rolled-back batch counts nothing, and
concurrent writers on PostgreSQL each add under the row lock (keys are upserted in sorted order
so two batches never wait on each other crosswise). A purge subtracts what it deleted in the
same transaction as the delete. Migration 0007 fills the table from the events already stored
(0008 refills it with the agent in the key: the report's top hosts are grouped by agent).

The same violations are summed into :data:`tables.violation_blocks` (blocks of
:data:`BLOCK_DAYS` days × kind × action × rule × agent) in the same statements' transaction and
by the same rules: a long report reads its whole blocks there and only the days at its ends
from the daily rows (migration 0009). A block row has no host or user in its key, so two
transactions counting the same agent's violations of one rule and action within 8 days queue
on it, as two counting the same day's host and user queue on a daily row: an agent's reporter
sends one batch at a time, so that is a retry meeting its first attempt, for milliseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, and_, delete, func, select, text, update

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import violation_blocks as vb
from proscribe.collector.storage.tables import violation_counts as vc

DAY_US = 86_400 * 1_000_000
KEY_CHARS = 128  # = the longest policy rule id (core/policy/_checks.py _ID): rules match exactly
VIOLATION_KINDS = ("process", "dns", "file", "model", "tamper")

BLOCK_DAYS = 8  # days per row of violation_blocks (= migration 0009's)

Key = tuple[int, str, str, str, str, str, str, str]
BlockKey = tuple[int, str, str, str, str]  # block, kind, action, rule, agent_id


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
_BLOCK_COLUMNS = ("block", "kind", "action", "rule", "agent_id")


def blocks_of(counts: Counter[Key]) -> Counter[BlockKey]:
    """``counts`` summed into the rows of :data:`tables.violation_blocks`."""
    out: Counter[BlockKey] = Counter()
    for (day, kind, action, _severity, rule, _host, _user, agent_id), n in counts.items():
        out[(day // BLOCK_DAYS, kind, action, rule, agent_id)] += n
    return out


def add(conn: Connection, counts: Counter[Key]) -> None:
    """Add ``counts`` to the daily table and its blocks (in the caller's transaction; the two
    tables in that order, each in key order, in every transaction that writes them)."""
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
    for table, columns, keyed in (
        (vc, _COLUMNS, ordered),
        (vb, _BLOCK_COLUMNS, sorted(blocks_of(counts).items())),
    ):
        values = [{**dict(zip(columns, key, strict=True)), "n": n} for key, n in keyed]
        # One statement, executed for every row in key order (the lock order above). A
        # fixed statement is compiled once and cached: a VALUES list of varying length would
        # be compiled per batch.
        stmt = dialect_insert(conn, table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(columns), set_={"n": table.c.n + stmt.excluded.n}
        )
        conn.execute(stmt, values)


_ARRAYS = ", ".join(f"CAST(:{c} AS {'integer' if c == 'day' else 'text'}[])" for c in _COLUMNS)
# The daily rows, then their blocks summed from the same arrays by PostgreSQL, in one
# statement. The blocks' insert is gated on a one-time filter that reads every row the daily
# insert returns, so the daily rows are all written (and locked) before the first block row:
# the same order as every other transaction that writes both (a purge's subtract).
_PG_ADD = text(
    f"WITH k AS (SELECT * FROM unnest({_ARRAYS}, CAST(:n AS bigint[])) "  # noqa: S608 - constants
    f"AS k({', '.join(_COLUMNS)}, n)), "
    f"daily AS (INSERT INTO violation_counts ({', '.join(_COLUMNS)}, n) "
    f"SELECT * FROM k ORDER BY {', '.join(_COLUMNS)} "
    f"ON CONFLICT ({', '.join(_COLUMNS)}) DO UPDATE SET n = violation_counts.n + excluded.n "
    "RETURNING 1) "
    f"INSERT INTO violation_blocks ({', '.join(_BLOCK_COLUMNS)}, n) "
    f"SELECT day / {BLOCK_DAYS}, kind, action, rule, agent_id, sum(n) FROM k "
    "WHERE (SELECT count(*) FROM daily) > 0 "
    "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5 "
    f"ON CONFLICT ({', '.join(_BLOCK_COLUMNS)}) DO UPDATE SET n = violation_blocks.n + excluded.n"
)


def subtract(conn: Connection, counts: Counter[Key]) -> None:
    """Take ``counts`` off the daily table and its blocks (a purge), dropping rows that reach
    zero."""
    for table, columns, keyed in (
        (vc, _COLUMNS, counts),
        (vb, _BLOCK_COLUMNS, blocks_of(counts)),
    ):
        for key, n in sorted(keyed.items()):
            match = and_(*(table.c[c] == value for c, value in zip(columns, key, strict=True)))
            conn.execute(update(table).where(match).values(n=table.c.n - n))
            conn.execute(delete(table).where(match, table.c.n <= 0))


def total(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.sum(vc.c.n), 0))).scalar_one())


def _lock_counts(conn: Connection) -> None:
    """PostgreSQL: no one else writes either counts table until the caller commits (readers
    go on). An ingest that stored its events meanwhile waits at its counts upsert and adds
    them after the rebuild, which read only committed events. SQLite's write transaction is
    exclusive already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE violation_counts, violation_blocks IN EXCLUSIVE MODE"))


def recount(conn: Connection) -> int:
    """Rebuild the daily counts from the events in one grouped pass (the same SQL as
    migration 0008's backfill), and their blocks from them (0009's), with both tables locked
    against writers (:func:`_lock_counts`): ``collector recount``, and bulk loads that write
    the events table directly, such as the benchmarks' fixtures. Returns the number of
    violations counted."""
    _lock_counts(conn)
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
    _rebuild_blocks(conn)
    return total(conn)


def _rebuild_blocks(conn: Connection) -> None:
    conn.execute(delete(vb))
    conn.execute(
        text(
            "INSERT INTO violation_blocks (block, kind, action, rule, agent_id, n) "  # noqa: S608
            f"SELECT day / {BLOCK_DAYS} AS b, kind, action, rule, agent_id, sum(n) "
            "FROM violation_counts GROUP BY b, kind, action, rule, agent_id"
        )
    )


# Each block's total in the daily rows and in the blocks table, where they differ: one
# statement, so one snapshot of both (every writer changes both in one transaction).
_DISAGREE = text(
    f"SELECT b, sum(daily), sum(blocked) FROM (SELECT day / {BLOCK_DAYS} AS b, "  # noqa: S608
    "n AS daily, 0 AS blocked FROM violation_counts UNION ALL "
    "SELECT block, 0, n FROM violation_blocks) AS both_tables "
    "GROUP BY b HAVING sum(daily) <> sum(blocked) ORDER BY b"
)


def disagreeing_blocks(conn: Connection) -> list[int]:
    """The blocks whose total in ``violation_blocks`` is not the sum of their days in
    ``violation_counts``: none, unless something wrote one table without the other — a
    collector older than migration 0009 still storing (or purging) events after another
    replica migrated the database."""
    return [int(row[0]) for row in conn.execute(_DISAGREE)]


def repair_blocks(conn: Connection) -> list[int]:
    """Rebuild ``violation_blocks`` from the daily counts if any block disagrees (checked
    again under the lock); returns the blocks that did."""
    _lock_counts(conn)
    wrong = disagreeing_blocks(conn)
    if wrong:
        _rebuild_blocks(conn)
    return wrong
