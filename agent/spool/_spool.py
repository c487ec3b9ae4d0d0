"""The durable spool: every event is committed here before anything else happens to it.

See the package docstring for the guarantees and the eviction order.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from proscribe.core.errors import SpoolError
from proscribe.core.events import MAX_BATCH_BYTES, Event

from ._database import open_database, salvage_pending
from ._records import (
    DEAD,
    HEALTH_KINDS,
    PENDING,
    SENT,
    SpooledEvent,
    SpoolStats,
    fold_key,
    rule_key,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_SIGHTINGS = 100_000  # processes remembered as reported (about 100 bytes each)
_COLUMNS = "id, body, size, state, count, created, error"
_ID_CHUNK = 500  # ids bound in one statement (well below SQLite's variable limit)


def _id_chunks(ids: list[str]) -> Iterator[tuple[list[str], str]]:
    """``ids`` in slices bound at once, each with its ``?,?,…`` placeholders."""
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def _row(row: tuple[Any, ...]) -> SpooledEvent:
    event_id, body, size, state, count, created, error = row
    event: Event = json.loads(body)
    if count > 1 or "count" in event:
        event["count"] = count
    return SpooledEvent(event_id, event, size, state, count, created, error)


@dataclass(frozen=True, slots=True)
class _Prepared:
    id: str
    body: str
    size: int
    kind: str
    rule_key: str
    fold_key: int | None
    count: int


def _prepare(event: Event) -> _Prepared:
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("an event needs a string 'id' before it is spooled")
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    count = event.get("count", 1)
    return _Prepared(
        id=event_id,
        body=body,
        size=len(body.encode("utf-8")),
        kind=str(event.get("kind")),
        rule_key=rule_key(event),
        fold_key=fold_key(event),
        count=count if isinstance(count, int) and count > 0 else 1,
    )


class Spool:
    """A bounded, durable, thread-safe queue of events in one SQLite file.

    ``recover=False`` is for readers beside the daemon (``agent status``/``agent events``): a
    corrupt file raises SpoolError instead of being moved aside under the daemon's feet.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_events: int = 100_000,
        max_bytes: int = 50 * MiB,
        history_limit: int = 1000,
        clock: Callable[[], float] = time.time,
        recover: bool = True,
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("spool caps must be positive")
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.history_limit = history_limit
        self._clock = clock
        self._lock = threading.Lock()
        conn, moved = open_database(self.path, clock(), recover=recover)
        self._conn: sqlite3.Connection | None = conn
        self.corrupt_moved_to = moved
        self._sighting_boot: str | None = None  # the boot whose sightings are kept
        # Ids handed to the reporter and not yet acknowledged: never folded or evicted under it.
        self._in_flight: set[str] = set()
        # Fold keys that have more than one pending row: what a fold pass has to visit.
        self._fold_candidates: set[int] = {
            int(row[0])
            for row in conn.execute(
                "SELECT fold_key FROM events WHERE state = ? AND fold_key IS NOT NULL"
                " GROUP BY fold_key HAVING COUNT(*) > 1",
                (PENDING,),
            )
        }
        rows, used = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events").fetchone()
        self._rows: int = int(rows)
        self._bytes: int = int(used)
        self._seq: int = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        if moved is not None:
            self._bump_counter_now("corrupt_replaced", 1)
            self._salvage(moved)

    def _salvage(self, moved: Path) -> None:
        """Re-spool the unsent events still readable in the corrupt file (best effort; the
        collector stores an event once, so one that was in fact delivered is harmless)."""
        events, unreadable = salvage_pending(moved)
        stored = sum(self.append_many(events)) if events else 0
        self._bump_counter_now("corrupt_salvaged", stored)
        log.error(
            "spool %s: %d unsent event(s) recovered from the corrupt file %s "
            "(%d unreadable part(s) skipped)",
            self.path, stored, moved, unreadable,
        )  # fmt: skip

    # -- plumbing ---------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(f"{self.path}: the spool is closed")
        return self._conn

    def _bump(self, db: sqlite3.Connection, name: str, n: float = 1) -> None:
        db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _bump_counter_now(self, name: str, n: float) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        self._bump(db, name, n)
        db.execute("COMMIT")

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        rows, size = self._rows, self._bytes
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            self._rows, self._bytes = rows, size
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    def _delete(self, db: sqlite3.Connection, ids: list[str]) -> None:
        for chunk, marks in _id_chunks(ids):
            freed = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE id IN ({marks})",  # noqa: S608
                chunk,
            ).fetchone()
            db.execute(f"DELETE FROM events WHERE id IN ({marks})", chunk)  # noqa: S608
            self._rows -= freed[0]
            self._bytes -= freed[1]

    # -- writing ----------------------------------------------------------------------------

    def append(self, event: Event) -> bool:
        """Commit ``event`` durably; True once it is on disk (or was already there).

        False only when it cannot be stored: larger than a batch may be, the spool is full of
        rows that must be kept, or the disk refused the write. Every False is counted in
        ``stats().dropped``. Never raises for a storage problem: a sensor thread calls this.
        """
        return self.append_many([event])[0]

    def append_many(self, events: list[Event]) -> list[bool]:
        """Commit several events in ONE transaction (one fsync): for bursts. Same rules."""
        rows = [_prepare(event) for event in events]
        if not rows:
            return []

        def work(db: sqlite3.Connection) -> list[bool]:
            return [self._insert(db, row) for row in rows]

        with self._lock:
            if self._conn is None:
                log.error("spool %s is closed; %d event(s) not stored", self.path, len(rows))
                return [False] * len(rows)
            try:
                return list(self._transaction(work))
            except sqlite3.Error as err:
                log.error("spool %s: could not store %d event(s): %s", self.path, len(rows), err)
                try:
                    self._bump_counter_now("dropped:write_error", len(rows))
                except sqlite3.Error:
                    pass
                return [False] * len(rows)

    def _insert(self, db: sqlite3.Connection, row: _Prepared) -> bool:
        if db.execute("SELECT 1 FROM events WHERE id = ?", (row.id,)).fetchone():
            return True  # same id twice: already stored, nothing to do
        if row.size > min(self.max_bytes, MAX_BATCH_BYTES):
            self._bump(db, "dropped:too_large")
            return False
        if not self._make_room(db, row.size):
            self._bump(db, "dropped:full")
            return False
        if row.fold_key is not None and row.fold_key not in self._fold_candidates:
            repeat = db.execute(
                "SELECT 1 FROM events WHERE fold_key = ? AND state = ? LIMIT 1",
                (row.fold_key, PENDING),
            ).fetchone()
            if repeat:
                self._fold_candidates.add(row.fold_key)
        self._seq += 1
        db.execute(
            "INSERT INTO events(id, seq, kind, rule_key, fold_key, state, count, size, body,"
            " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                self._seq,
                row.kind,
                row.rule_key,
                row.fold_key,
                PENDING,
                row.count,
                row.size,
                row.body,
                self._clock(),
            ),
        )
        self._rows += 1
        self._bytes += row.size
        return True

    def _fits(self, size: int) -> bool:
        return self._rows + 1 <= self.max_events and self._bytes + size <= self.max_bytes

    def _make_room(self, db: sqlite3.Connection, size: int) -> bool:
        """Evict in the stated order until one more row of ``size`` bytes fits."""
        if self._fits(size):
            return True
        # 0. Delivered history and dead letters: they will never be sent again.
        self._evict_oldest(db, size, "state IN (?, ?)", (SENT, DEAD), None)
        if self._fits(size):
            return True
        # 1. Agent health rows.
        marks = ",".join("?" * len(HEALTH_KINDS))
        self._evict_oldest(
            db,
            size,
            f"state = ? AND kind IN ({marks})",
            (PENDING, *HEALTH_KINDS),
            "evicted_health",
            # without statistics the planner would walk every pending row to find a few
            source="events INDEXED BY events_kind",
        )
        if self._fits(size):
            return True
        # 2. Repeats folded into the count of the oldest row of their kind.
        if self._fold_candidates:
            self._fold_repeats(db, size)
            if self._fits(size):
                return True
        # 3. Oldest violations, except the first pending one of each rule.
        self._evict_oldest(
            db,
            size,
            "state = ? AND seq > (SELECT MIN(f.seq) FROM events f"
            " WHERE f.rule_key = events.rule_key AND f.state = events.state)",
            (PENDING,),
            "evicted_oldest",
        )
        return self._fits(size)

    def _evict_oldest(
        self,
        db: sqlite3.Connection,
        size: int,
        where: str,
        params: tuple[Any, ...],
        reason: str | None,
        source: str = "events",
    ) -> None:
        while not self._fits(size):
            need_rows = max(0, self._rows + 1 - self.max_events)
            batch = max(need_rows, 16) + len(self._in_flight)
            candidates = db.execute(
                f"SELECT id, size FROM {source} WHERE {where} ORDER BY seq LIMIT ?",  # noqa: S608
                (*params, batch),
            ).fetchall()
            victims: list[str] = []
            rows, used = self._rows, self._bytes
            for event_id, row_size in candidates:
                if event_id in self._in_flight:
                    continue
                if rows + 1 <= self.max_events and used + size <= self.max_bytes:
                    break
                victims.append(event_id)
                rows -= 1
                used -= row_size
            if not victims:
                return
            self._delete(db, victims)
            if reason is not None:
                self._bump(db, f"dropped:{reason}", len(victims))

    def _fold_repeats(self, db: sqlite3.Connection, size: int) -> None:
        # Only keys known to have several pending rows are visited, each through the
        # (fold_key, state, seq) index, and only until the new row fits: an append at the cap
        # pays for one or a few groups, never for a pass over the whole spool.
        folded = 0
        for key in sorted(self._fold_candidates):
            if self._fits(size):
                break
            self._fold_candidates.discard(key)
            members = db.execute(
                "SELECT id, count FROM events WHERE fold_key = ? AND state = ? ORDER BY seq",
                (key, PENDING),
            ).fetchall()
            free = [(i, c) for i, c in members if i not in self._in_flight]
            if len(free) < 2:
                continue
            keeper, rest = free[0][0], free[1:]
            db.execute(
                "UPDATE events SET count = count + ? WHERE id = ?",
                (sum(c for _, c in rest), keeper),
            )
            self._delete(db, [i for i, _ in rest])
            folded += len(rest)
        if folded:
            self._bump(db, "dropped:folded", folded)
            log.info("spool full: folded %d repeated events into counts", folded)

    def bump_count(self, event_id: str, n: int = 1) -> bool:
        """Fold ``n`` repeats into a pending event; False if it is sent, in flight or gone.

        On False the caller spools a new event instead (the repeat is not lost).
        """
        if n < 1:
            raise ValueError("n must be positive")
        with self._lock:
            if event_id in self._in_flight:
                return False

            def work(db: sqlite3.Connection) -> bool:
                cur = db.execute(
                    "UPDATE events SET count = count + ? WHERE id = ? AND state = ?",
                    (n, event_id, PENDING),
                )
                return cur.rowcount == 1

            return bool(self._locked_write(work))

    def _locked_write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return self._transaction(work)
        except sqlite3.Error as err:
            raise SpoolError(f"{self.path}: spool write failed ({err})") from err

    # -- delivery ---------------------------------------------------------------------------

    def pending(self, limit: int = 500, max_bytes: int = MAX_BATCH_BYTES) -> list[SpooledEvent]:
        """The oldest unacknowledged events, at most ``limit`` rows and ``max_bytes`` of JSON.

        A single row larger than ``max_bytes`` is still returned alone, so that the reporter
        can have it refused and dead-letter it rather than stall behind it.
        """
        with self._lock:
            try:
                cur = self._db().execute(
                    f"SELECT {_COLUMNS} FROM events WHERE state = ? ORDER BY seq LIMIT ?",  # noqa: S608
                    (PENDING, max(0, limit)),
                )
                out: list[SpooledEvent] = []
                total = 0
                for raw in cur:
                    item = _row(raw)
                    if out and total + item.size > max_bytes:
                        break
                    out.append(item)
                    total += item.size
            except sqlite3.Error as err:
                raise SpoolError(f"{self.path}: spool read failed ({err})") from err
            self._in_flight.update(item.id for item in out)
            return out

    def ack(self, ids: Iterable[str]) -> int:
        """Mark events delivered (stored or duplicate at the collector); returns rows changed."""
        return self._settle(list(ids), SENT, None, "sent")

    def dead_letter(self, ids: Iterable[str], reason: str) -> int:
        """Take events out of delivery for good (the collector refused them), keeping the why."""
        return self._settle(list(ids), DEAD, reason[:500], "dead_lettered")

    def requeue(self, ids: Iterable[str] | None = None) -> list[str]:
        """Put dead letters back into delivery (all of them, or those of ``ids``), in their
        original order (a row keeps its place in the sequence); returns the ids requeued. An id
        that is not a dead letter (pending, sent, evicted, unknown) is left alone. A collector
        that still refuses one dead-letters it again."""
        wanted = None if ids is None else list(dict.fromkeys(ids))
        now = self._clock()

        def work(db: sqlite3.Connection) -> list[str]:
            requeue = "UPDATE events SET state = ?, state_time = ?, error = NULL WHERE state = ?"
            if wanted is None:
                found = [r[0] for r in db.execute("SELECT id FROM events WHERE state = ?", (DEAD,))]
                db.execute(requeue, (PENDING, now, DEAD))
            else:
                found = []
                for chunk, marks in _id_chunks(wanted):
                    found += [
                        r[0]
                        for r in db.execute(
                            f"SELECT id FROM events WHERE state = ? AND id IN ({marks})",  # noqa: S608
                            (DEAD, *chunk),
                        )
                    ]
                    db.execute(f"{requeue} AND id IN ({marks})", (PENDING, now, DEAD, *chunk))
            if found:
                self._bump(db, "requeued", len(found))
            return found

        with self._lock:
            return list(self._locked_write(work))

    def _settle(self, ids: list[str], state: str, error: str | None, counter: str) -> int:
        if not ids:
            return 0
        now = self._clock()

        def work(db: sqlite3.Connection) -> int:
            changed = 0
            for chunk, marks in _id_chunks(ids):
                changed += db.execute(
                    f"UPDATE events SET state = ?, state_time = ?, error = ?"  # noqa: S608
                    f" WHERE state = ? AND id IN ({marks})",
                    (state, now, error, PENDING, *chunk),
                ).rowcount
            if changed:
                self._bump(db, counter, changed)
                if state == SENT:
                    db.execute(
                        "INSERT INTO counters(name, value) VALUES ('last_ack_time', ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        (now,),
                    )
            self._trim_history(db, state)
            return changed

        with self._lock:
            result = int(self._locked_write(work))
            self._in_flight.difference_update(ids)
            return result

    def _trim_history(self, db: sqlite3.Connection, state: str) -> None:
        excess = db.execute(
            "SELECT id FROM events WHERE state = ? ORDER BY seq DESC LIMIT -1 OFFSET ?",
            (state, self.history_limit),
        ).fetchall()
        if excess:
            self._delete(db, [r[0] for r in excess])

    # -- reading ----------------------------------------------------------------------------

    def recent(self, limit: int = 50, include_sent: bool = True) -> list[SpooledEvent]:
        """Newest first: pending rows, and (by default) the kept history of sent/dead rows."""
        where = "" if include_sent else "WHERE state = 'pending'"
        with self._lock:
            try:
                rows = (
                    self._db()
                    .execute(
                        f"SELECT {_COLUMNS} FROM events {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
                        (max(0, limit),),
                    )
                    .fetchall()
                )
            except sqlite3.Error as err:
                raise SpoolError(f"{self.path}: spool read failed ({err})") from err
        return [_row(r) for r in rows]

    def stats(self) -> SpoolStats:
        with self._lock:
            try:
                db = self._db()
                depth, pending_bytes = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE state = ?",
                    (PENDING,),
                ).fetchone()
                counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            except sqlite3.Error as err:
                raise SpoolError(f"{self.path}: spool read failed ({err})") from err
            rows, used = self._rows, self._bytes
        dropped = {
            name.removeprefix("dropped:"): int(value)
            for name, value in sorted(counters.items())
            if name.startswith("dropped:")
        }
        last_ack = counters.get("last_ack_time")
        return SpoolStats(
            depth=depth,
            bytes=pending_bytes,
            dropped=dropped,
            sent=int(counters.get("sent", 0)),
            dead_lettered=int(counters.get("dead_lettered", 0)),
            requeued=int(counters.get("requeued", 0)),
            last_ack_time=float(last_ack) if last_ack is not None else None,
            stored_rows=rows,
            stored_bytes=used,
            max_events=self.max_events,
            max_bytes=self.max_bytes,
            corrupt_moved_to=str(self.corrupt_moved_to) if self.corrupt_moved_to else None,
            corrupt_replaced=int(counters.get("corrupt_replaced", 0)),
            corrupt_salvaged=int(counters.get("corrupt_salvaged", 0)),
        )

    # -- sightings ---------------------------------------------------------------------------
    # What was already reported, kept across agent restarts: one process (boot id, pid, start
    # time) under one rule is reported once, however often the agent restarts and sweeps.

    def sighted(self, key: str) -> bool:
        """Whether ``key`` was recorded (by :meth:`record_sighting`) in this spool."""
        with self._lock:
            try:
                row = self._db().execute("SELECT 1 FROM sightings WHERE key = ?", (key,))
                return row.fetchone() is not None
            except sqlite3.Error:
                return False  # judged again rather than lost

    def record_sighting(self, key: str, boot_id: str) -> None:
        """Remember ``key``; sightings of other boots are forgotten (their processes are gone)
        and at most ``max_sightings`` are kept, the oldest forgotten first."""

        def work(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                "INSERT OR IGNORE INTO sightings(key, boot_id, seen) VALUES (?, ?, ?)",
                (key, boot_id, self._clock()),
            )
            if cursor.rowcount and self._sighting_boot != boot_id:
                db.execute("DELETE FROM sightings WHERE boot_id != ?", (boot_id,))
                self._sighting_boot = boot_id
            over = db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0] - MAX_SIGHTINGS
            if over > 0:
                db.execute(
                    "DELETE FROM sightings WHERE key IN "
                    "(SELECT key FROM sightings ORDER BY seen LIMIT ?)",
                    (over,),
                )

        try:
            with self._lock:
                self._locked_write(work)
        except (sqlite3.Error, SpoolError):
            log.warning("could not record a sighting in %s (it may be reported again)", self.path)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
