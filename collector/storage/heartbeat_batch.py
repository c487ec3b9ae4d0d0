"""Heartbeats in batches on PostgreSQL: a handful of set-based statements for many agents.

One heartbeat alone is ten round trips through SQLAlchemy (agent look-up, nonce, previous host
row, history, upsert, policy, signers, ...), and Python's cost per statement, not PostgreSQL's,
was most of a replica's CPU (docs/scale.md). :class:`HeartbeatFlusher` is one thread per
replica with its own long-lived connection (autocommit, ``synchronous_commit = off`` set once
for the session: a heartbeat lost in a power cut costs nothing). Requests queue their
heartbeat and wait; the flusher takes whatever queued while its last batch ran (so a batch
grows with the load by itself) and writes it with :func:`store_heartbeats`, three statements
whatever the batch's size:

1. the agents (revoked? renamed?) and their previous host rows, one ``SELECT … = ANY``;
2. one write, atomic as any single statement (data-modifying CTEs): the nonces of the agents
   still allowed, ``INSERT … FROM unnest ON CONFLICT DO NOTHING RETURNING`` (a nonce not
   returned was seen before: that heartbeat alone is refused, ``replayed_nonce``, and writes
   nothing); then, for the new nonces only, the history rows of the hosts that changed, the
   renames, and the host upsert from ``json_to_recordset``, with the serial-regression rule
   in SQL against the stored row (:func:`proscribe.collector.storage.hosts.upsert_set`), so
   replicas cannot interleave a read and a write;
3. the current policy and the signer names, read once for the batch.

``ON CONFLICT DO UPDATE`` cannot touch one row twice in a statement, so a second heartbeat of
an agent already in the batch (or a nonce already in it) waits for the next batch. Rows are
written in ``agent_id`` order, so two replicas' batches lock shared rows in the same order.

A database error in the write leaves nothing of the batch. If the database refused a value
(an integrity or data error), each heartbeat of the batch is then written alone, so only the
one it belongs to fails. Any other error (the database unreachable) is every member's answer
(500, as a database outage was before); the agents send again next minute. A connection that
dropped (a PostgreSQL restart) is replaced, and the batch tried once more, as is a batch that
lost a deadlock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    String,
    any_,
    bindparam,
    cast,
    column,
    func,
    select,
    table,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from proscribe.collector.storage.database import Database
from proscribe.collector.storage.hosts import (
    PREVIOUS_COLUMNS,
    UPSERT_COLUMNS,
    HeartbeatRecord,
    heartbeat_changes,
    history_rows,
    host_params,
    upsert_set,
)
from proscribe.collector.storage.signers import Signer
from proscribe.collector.storage.tables import agents, hosts

log = logging.getLogger(__name__)

MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class PendingHeartbeat:
    """A heartbeat whose signature is verified. ``record.hostname`` empty: the agent did not
    say, and its enrolled name stands."""

    record: HeartbeatRecord
    nonce: str
    nonce_expires_us: int


@dataclass(frozen=True, slots=True)
class HeartbeatOutcome:
    """``refused``: the 401 slug (``unknown_agent``, ``revoked_agent``, ``replayed_nonce``),
    nothing stored; else the host's ``regressed`` flag. ``policy`` and ``signers``: what the
    answer carries, read in the batch's transaction."""

    refused: str | None
    regressed: bool
    policy: tuple[int, str] | None
    signers: dict[str, str]


# Each agent's previous host row through a LATERAL look-up with LIMIT 1: PostgreSQL cannot
# flatten it into a join, so it is always an index probe per agent of the batch. As a plain
# outer join, a hosts table whose statistics were stale (never analysed: 105 rows estimated,
# 10,000 there) was hash-joined after a scan of every host: 2.4 ms of PostgreSQL for a
# batch of one, where the probe costs 0.1 ms.
_PREVIOUS_HOST = (
    select(hosts.c.agent_id.label("host_id"), *PREVIOUS_COLUMNS)
    .where(hosts.c.agent_id == agents.c.agent_id)
    .limit(1)
    .lateral("h")
)
_AGENTS_AND_HOSTS = (
    select(
        agents.c.agent_id,
        agents.c.revoked_us,
        agents.c.hostname.label("agent_hostname"),
        *_PREVIOUS_HOST.c,
    )
    .select_from(agents.outerjoin(_PREVIOUS_HOST, true()))
    .where(agents.c.agent_id == any_(bindparam("ids", type_=ARRAY(String))))
)


def store_heartbeats(
    conn: Connection, batch: Sequence[PendingHeartbeat], now_us: int, window_us: int | None
) -> list[HeartbeatOutcome]:
    """Write ``batch`` (distinct agents, distinct nonces): one outcome per heartbeat, in
    order. Two statements whatever the batch's size: the read, then one write that records
    the nonces and, for the heartbeats whose nonce was new, the history, renames and hosts
    (one statement, so atomic even on an autocommit connection; see :func:`_write_sql`)."""
    found = {
        row.agent_id: row
        for row in conn.execute(_AGENTS_AND_HOSTS, {"ids": [p.record.agent_id for p in batch]})
    }
    refused: dict[int, str] = {}
    for i, pending in enumerate(batch):
        row = found.get(pending.record.agent_id)
        if row is None:
            refused[i] = "unknown_agent"
        elif row.revoked_us is not None:
            refused[i] = "revoked_agent"
    allowed = [
        (batch[i], found[batch[i].record.agent_id]) for i in range(len(batch)) if i not in refused
    ]
    written = _write(conn, allowed, now_us, window_us)
    for i, pending in enumerate(batch):
        if i not in refused and pending.record.agent_id not in written:
            refused[i] = "replayed_nonce"
    policy, names = _answer(conn)
    return [
        HeartbeatOutcome(refused.get(i), written.get(p.record.agent_id, False), policy, names)
        for i, p in enumerate(batch)
    ]


# What every heartbeat's answer carries, in one statement: the current policy (the highest
# serial, as policies.current_policy_ref) and the signers' names (as signers.list_signers, in
# the order they were added).
_ANSWER = (
    "(SELECT 0 AS k, serial, sha256 AS keyid, NULL AS name, NULL AS role, "
    "NULL::bigint AS added_us, NULL::bigint AS retired_us "
    "FROM policies ORDER BY serial DESC LIMIT 1) "
    "UNION ALL (SELECT 1, NULL, keyid, name, role, added_us, retired_us FROM signers) "
    "ORDER BY k, added_us"
)


def _answer(conn: Connection) -> tuple[tuple[int, str] | None, dict[str, str]]:
    policy: tuple[int, str] | None = None
    names: dict[str, str] = {}
    for kind, serial, keyid, name, role, added_us, retired_us in conn.exec_driver_sql(_ANSWER):
        if kind == 0:
            policy = (int(serial), str(keyid))
        else:
            signer = Signer(keyid, name, role, "", int(added_us), retired_us)
            names[signer.keyid] = signer.describe()
    return policy, names


def _write(
    conn: Connection,
    allowed: Sequence[tuple[PendingHeartbeat, Any]],
    now_us: int,
    window_us: int | None,
) -> dict[str, bool]:
    """The write statement for the heartbeats of agents still allowed (with their row of
    the read); returns ``{agent_id: serial_regressed}`` of those whose nonce was new."""
    if not allowed:
        return {}
    history: list[dict[str, Any]] = []
    renames: list[dict[str, str]] = []
    params: list[dict[str, Any]] = []
    for pending, row in allowed:
        record = pending.record
        if not record.hostname:
            record = replace(record, hostname=row.agent_hostname)
        elif record.hostname != row.agent_hostname:
            # The one way a host's name changes (events never rename it).
            renames.append({"agent_id": record.agent_id, "hostname": record.hostname})
        previous = row if row.host_id is not None else None
        changes = heartbeat_changes(previous, record, now_us, window_us)
        for entry in history_rows(record.agent_id, changes, now_us):
            history.append({"i": len(history), **entry})
        params.append(host_params(previous, record, changes, now_us))
    result = conn.exec_driver_sql(
        _write_sql(conn),
        {
            "n": [p.nonce for p, _row in allowed],
            "a": [p.record.agent_id for p, _row in allowed],
            "e": [p.nonce_expires_us for p, _row in allowed],
            "history": json.dumps(history),
            "renames": json.dumps(renames),
            "rows": json.dumps(params),
        },
    )
    return {str(agent_id): bool(regressed) for agent_id, regressed in result}


_WRITE_SQL: list[str] = []


def _write_sql(conn: Connection) -> str:
    """One statement (data-modifying CTEs): the nonces first (``n``: those that were new);
    then, only for those, the history rows in order, the renames, and the host upsert in
    ``agent_id`` order (two replicas' batches lock shared rows in the same order) with the
    same SET clauses as the single-row upsert, the regression rule judged against the stored
    row. Answers ``(agent_id, serial_regressed)`` per new nonce. Built once."""
    if _WRITE_SQL:
        return _WRITE_SQL[0]
    names = list(UPSERT_COLUMNS)
    source = (
        func.json_to_recordset(cast(bindparam("rows", type_=String), JSON))
        .table_valued(*(column(name, hosts.c[name].type) for name in names))
        .render_derived(name="r", with_types=True)
    )
    new_nonces = table("n", column("agent_id"))
    insert_rows = pg_insert(hosts).from_select(
        names,
        select(*(source.c[name] for name in names))
        .where(source.c.agent_id.in_(select(new_nonces.c.agent_id)))
        .order_by(source.c.agent_id),
    )
    upsert = insert_rows.on_conflict_do_update(
        index_elements=["agent_id"], set_=upsert_set(insert_rows.excluded)
    ).returning(hosts.c.agent_id, hosts.c.serial_regressed)
    sql = (
        "WITH n AS (INSERT INTO nonces (nonce, agent_id, expires_us) "  # noqa: S608 - no input
        "SELECT * FROM unnest(%(n)s::text[], %(a)s::text[], %(e)s::bigint[]) "
        "ON CONFLICT (nonce) DO NOTHING RETURNING agent_id), "
        "hist AS (INSERT INTO host_history (agent_id, time_us, kind, detail) "
        "SELECT r.agent_id, r.time_us, r.kind, r.detail "
        "FROM json_to_recordset(%(history)s::json) "
        "AS r(i bigint, agent_id text, time_us bigint, kind text, detail text) "
        "WHERE r.agent_id IN (SELECT agent_id FROM n) ORDER BY r.i), "
        "ren AS (UPDATE agents SET hostname = r.hostname "
        "FROM json_to_recordset(%(renames)s::json) AS r(agent_id text, hostname text) "
        "WHERE agents.agent_id = r.agent_id AND r.agent_id IN (SELECT agent_id FROM n)), "
        f"up AS ({upsert.compile(dialect=conn.dialect)}) "
        "SELECT n.agent_id, up.serial_regressed FROM n LEFT JOIN up ON up.agent_id = n.agent_id"
    )
    _WRITE_SQL.append(sql)
    return sql


class _Waiter:
    __slots__ = ("future", "loop", "pending")

    def __init__(
        self, pending: PendingHeartbeat, loop: asyncio.AbstractEventLoop, future: Any
    ) -> None:
        self.pending = pending
        self.loop = loop
        self.future = future


class HeartbeatFlusher:
    """The replica's heartbeat writer: one thread, one connection, one batch at a time."""

    def __init__(
        self,
        db: Database,
        *,
        now_us: Any,
        window_us: int | None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._db = db
        self._now_us = now_us
        self._window_us = window_us
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Waiter] = []
        self._stopping = False
        self._waiting = False  # the flusher sleeps on the condition (else it will look anyway)
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="heartbeat-flusher", daemon=True)
        self.batches = 0  # batches written (tests, metrics)
        self.largest = 0  # the largest batch so far

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    async def submit(self, pending: PendingHeartbeat) -> HeartbeatOutcome:
        """Queue ``pending``; the outcome once its batch is committed (or its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[HeartbeatOutcome] = loop.create_future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the collector is stopping")
            self._queue.append(_Waiter(pending, loop, future))
            if self._waiting:  # a busy flusher takes the queue when its batch is written
                self._cond.notify()
        return await future

    # --- the flusher thread -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._waiting = True
                    self._cond.wait()
                    self._waiting = False
                if not self._queue:  # stopping, and nothing left to write
                    break
                batch = self._take()
            try:
                self._flush(batch)
            except Exception as err:  # a bug: its batch answers it, and the flusher goes on
                log.exception("heartbeat flusher")
                self._answer_all(batch, [err] * len(batch))
        if self._conn is not None:
            self._conn.close()

    def _take(self) -> list[_Waiter]:
        """The next batch: queued heartbeats in arrival order, at most one per agent and per
        nonce (the rest stay queued, in order, for the next batch)."""
        batch: list[_Waiter] = []
        later: list[_Waiter] = []
        agents_seen: set[str] = set()
        nonces_seen: set[str] = set()
        for waiter in self._queue:
            agent_id, nonce = waiter.pending.record.agent_id, waiter.pending.nonce
            if len(batch) >= self._max_batch or agent_id in agents_seen or nonce in nonces_seen:
                later.append(waiter)
                continue
            agents_seen.add(agent_id)
            nonces_seen.add(nonce)
            batch.append(waiter)
        self._queue = later
        return batch

    def _flush(self, batch: list[_Waiter]) -> None:
        pending = [w.pending for w in batch]
        results: list[Any]
        try:
            results = list(self._write(pending))
        except (IntegrityError, DataError) as err:
            # What one heartbeat carried may be what the database refused: each alone, so
            # that one fails by itself and the others are stored.
            log.warning("heartbeat batch of %d refused (%s); writing each alone", len(batch), err)
            results = [self._write_alone(p) for p in pending]
        except Exception as err:  # the database is unwell: every member answers it
            log.error("heartbeat batch of %d failed: %s", len(batch), err)
            results = [err] * len(batch)
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        self._answer_all(batch, results)

    @staticmethod
    def _answer_all(batch: list[_Waiter], results: list[Any]) -> None:
        """Hand each waiting request its outcome (or error) on its own event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
        for waiter, result in zip(batch, results, strict=True):
            by_loop.setdefault(waiter.loop, []).append((waiter.future, result))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                continue

    def _write_alone(self, pending: PendingHeartbeat) -> HeartbeatOutcome | Exception:
        try:
            return self._write([pending])[0]
        except Exception as err:  # this heartbeat's own answer
            return err

    def _write(self, pending: list[PendingHeartbeat]) -> list[HeartbeatOutcome]:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return store_heartbeats(conn, pending, self._now_us(), self._window_us)
            except DBAPIError as err:
                self._discard_connection()
                if attempt == 1 and (err.connection_invalidated or _rolled_back(err)):
                    log.warning("heartbeat batch: %s; retrying it once", err.orig)
                    continue
                raise
            except Exception:
                self._discard_connection()
                raise
        raise AssertionError("unreachable")

    def _connection(self) -> Connection:
        if self._conn is None:
            # Autocommit: each batch's write is one statement (atomic by itself), so no
            # BEGIN and COMMIT round trips; the read before it sees what is committed, as a
            # READ COMMITTED transaction's would. Nothing else runs on this connection.
            conn = self._db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("SET synchronous_commit = off")
            self._conn = conn
        return self._conn

    def _discard_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # it is being thrown away
                log.debug("closing the heartbeat connection failed", exc_info=True)
            self._conn = None


def _rolled_back(err: DBAPIError) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40): nothing was written."""
    return str(getattr(err.orig, "sqlstate", "") or "").startswith("40")


def _settle(settled: list[tuple[Any, Any]]) -> None:
    """On the requests' event loop: hand each waiting request its outcome or error."""
    for future, result in settled:
        if future.done():  # the request was cancelled (client gone)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
