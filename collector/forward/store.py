"""A forwarder's persisted state: cursor, lease, counts, last error, dead letters.

**The cursor.** ``cursor_seq`` is the highest event ``seq`` settled for this destination: every
event at or below it was sent (acknowledged by the destination), skipped by ``min_severity``, or
dead-lettered. It moves only after the destination acknowledged the batch, in the same
transaction that counts it, so a crash of either side resends at most the batch in flight: the
duplicates carry the same event ``id``.

**In order, and nothing overtaken.** Events are read in ``seq`` order. On SQLite writers are
serialised and ``seq`` is taken in commit order, so a missing ``seq`` is a row that will never
come (rolled back, or purged). On PostgreSQL ``seq`` comes from a sequence when a transaction
inserts, not when it commits: ``seq`` 11 may become visible before 10 does. A gap therefore holds
the cursor back until it *settles*: it is filled, or every transaction that was writing when
the gap was first looked at (plus a short grace for one that had taken its ``seq`` and not yet
its transaction id) has ended — then the number was rolled back or consumed by
``ON CONFLICT DO NOTHING`` and will never be filled. A gap older than :data:`GAP_GIVE_UP_S`
(a writer stuck in a transaction for that long) is passed with a warning and counted.

**One replica at a time.** Replicas on one database share the row; the one holding the lease
(``lease_owner``, until ``lease_until_us``) forwards, and renews it at half its time. The cursor
update is fenced by the lease (``WHERE lease_owner = me``), so a replica that lost its lease
while a batch was in flight cannot move the cursor; its batch is then sent twice (same ids).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, text, update

from proscribe.collector.storage import Database
from proscribe.collector.storage.tables import events, forward_dead_letters, forward_state

log = logging.getLogger(__name__)

LEASE_S = 30.0  # the default of [[forward]] lease
GAP_GRACE_S = 0.5  # a writer that took its seq has its transaction id well within this
GAP_GIVE_UP_S = 600.0
MAX_REASON = 1000


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    event_id: str
    severity: str
    received_us: int
    body: str


@dataclass
class _Gap:
    seq: int
    first_seen: float
    snapshot: str | None = None


class ForwardStore:
    """The database side of one forwarder (``name``), as replica ``owner``."""

    def __init__(self, db: Database, name: str, owner: str, lease_s: float = LEASE_S) -> None:
        self.db = db
        self.lease_s = lease_s
        self.name = name
        self.owner = owner
        self._gap: _Gap | None = None
        self._renew_after_us = 0
        self.gaps_given_up = 0

    # --- the row and the lease ---------------------------------------------------------------

    def ensure(self, now_us: int, start: str) -> None:
        """Create the row on first use: cursor at 0 (``start = "beginning"``) or at the newest
        event (``"now"``). An existing row keeps its cursor."""
        with self.db.write() as conn:
            exists = conn.execute(
                select(forward_state.c.name).where(forward_state.c.name == self.name)
            ).first()
            if exists:
                return
            cursor = 0
            if start == "now":
                cursor = int(
                    conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one()
                )
            conn.execute(
                insert(forward_state).values(
                    name=self.name,
                    cursor_seq=cursor,
                    sent=0,
                    skipped=0,
                    dead_letters=0,
                    lease_owner=None,
                    lease_until_us=0,
                    created_us=now_us,
                )
            )

    def acquire(self, now_us: int) -> bool:
        """Take or renew the lease; False while another replica holds it. A lease held for
        more than half its time yet is not written again (an idle round is then reads only)."""
        if now_us < self._renew_after_us:
            return True
        until = now_us + int(self.lease_s * 1_000_000)
        with self.db.write(durable=False) as conn:
            result = conn.execute(
                update(forward_state)
                .where(forward_state.c.name == self.name)
                .where(
                    or_(
                        forward_state.c.lease_owner == self.owner,
                        forward_state.c.lease_owner.is_(None),
                        forward_state.c.lease_until_us < now_us,
                    )
                )
                .values(lease_owner=self.owner, lease_until_us=until)
            )
            held = bool(result.rowcount)
        self._renew_after_us = now_us + int(self.lease_s * 500_000) if held else 0
        return held

    def release(self) -> None:
        self._renew_after_us = 0
        with self.db.write(durable=False) as conn:
            conn.execute(
                update(forward_state)
                .where(forward_state.c.name == self.name)
                .where(forward_state.c.lease_owner == self.owner)
                .values(lease_owner=None, lease_until_us=0)
            )

    def cursor(self) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    select(forward_state.c.cursor_seq).where(forward_state.c.name == self.name)
                ).scalar_one()
            )

    # --- reading the next batch ----------------------------------------------------------------

    def next_batch(self, cursor: int, limit: int, now: float) -> list[EventRow]:
        """Up to ``limit`` events after ``cursor``, in ``seq`` order, stopping before a gap
        that has not settled (see the module's docstring)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(
                    events.c.seq,
                    events.c.event_id,
                    events.c.severity,
                    events.c.received_us,
                    events.c.body,
                )
                .where(events.c.seq > cursor)
                .order_by(events.c.seq)
                .limit(limit)
            ).all()
            batch: list[EventRow] = []
            expected = cursor + 1
            for row in rows:
                seq = int(row.seq)
                if seq != expected and not self._settled(conn, expected, now):
                    break
                if seq != expected:
                    self._gap = None
                batch.append(
                    EventRow(
                        seq,
                        str(row.event_id),
                        str(row.severity),
                        int(row.received_us),
                        str(row.body),
                    )
                )
                expected = seq + 1
            if batch and self._gap is not None and self._gap.seq <= batch[-1].seq:
                self._gap = None
            conn.rollback()
        return batch

    def _settled(self, conn: Connection, seq: int, now: float) -> bool:
        """May the cursor pass the missing ``seq``?"""
        if self.db.is_sqlite:
            return True
        gap = self._gap
        if gap is None or gap.seq != seq:
            self._gap = _Gap(seq, now)
            return False
        if now - gap.first_seen >= GAP_GIVE_UP_S:
            self.gaps_given_up += 1
            log.warning(
                "forwarder %s: seq %d still missing after %.0f s; passing it (a writer has "
                "been in one transaction for that long)",
                self.name,
                seq,
                GAP_GIVE_UP_S,
            )
            return True
        if gap.snapshot is None:
            if now - gap.first_seen < GAP_GRACE_S:
                return False
            gap.snapshot = str(
                conn.execute(text("SELECT pg_current_snapshot()::text")).scalar_one()
            )
        running = conn.execute(
            text(
                "SELECT count(*) FROM pg_snapshot_xip(CAST(:snap AS pg_snapshot)) AS x "
                "WHERE pg_xact_status(x) = 'in progress'"
            ),
            {"snap": gap.snapshot},
        ).scalar_one()
        return int(running) == 0

    # --- settling a batch -----------------------------------------------------------------------

    def advance(
        self,
        new_cursor: int,
        *,
        sent: int,
        skipped: int,
        dead: list[tuple[EventRow, str]],
        now_us: int,
    ) -> bool:
        """Move the cursor after the destination acknowledged; False if the lease was lost
        meanwhile (another replica forwards now; nothing is moved)."""
        with self.db.write() as conn:
            values: dict[str, Any] = {
                "cursor_seq": new_cursor,
                "sent": forward_state.c.sent + sent,
                "skipped": forward_state.c.skipped + skipped,
                "dead_letters": forward_state.c.dead_letters + len(dead),
            }
            values["last_error"] = None
            if sent:
                values["last_sent_us"] = now_us
            result = conn.execute(
                update(forward_state)
                .where(forward_state.c.name == self.name)
                .where(forward_state.c.lease_owner == self.owner)
                .where(forward_state.c.cursor_seq < new_cursor)
                .values(**values)
            )
            if not result.rowcount:
                self._renew_after_us = 0  # the lease is someone else's now
                return False
            if dead:
                conn.execute(
                    insert(forward_dead_letters),
                    [
                        {
                            "forwarder": self.name,
                            "event_seq": row.seq,
                            "event_id": row.event_id,
                            "reason": reason[:MAX_REASON],
                            "time_us": now_us,
                        }
                        for row, reason in dead
                    ],
                )
        return True

    def record_error(self, error: str, now_us: int) -> None:
        with self.db.write(durable=False) as conn:
            conn.execute(
                update(forward_state)
                .where(forward_state.c.name == self.name)
                .values(last_error=error[:MAX_REASON], last_error_us=now_us)
            )
