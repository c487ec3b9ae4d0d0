"""Per-day violation counts, kept in memory and brought up to date incrementally.

The overview must answer "violations per day, by action; top rules, hosts and users" over a
month of a million events in well under 300 ms. Grouping a million rows per request cannot do
that on SQLite, so the dashboard folds events into per-day counters once and then, on each
request, only reads the rows stored since (``seq > watermark``: a primary-key range scan).

The first build runs in a background thread (:meth:`ViolationRollup.warm`), started by the
first dashboard request; until it is done the overview says so instead of making the request
wait. It is a cache, derivable from the events table at any time, so replicas need not share
it. A retention purge (the lowest ``seq`` moving up) triggers a full rebuild. On PostgreSQL a
transaction that commits after a later one can land below the watermark; the rollup rescans a
trailing margin of sequence numbers there and folds only rows it has not seen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from proscribe.collector.storage import Database
from proscribe.collector.storage.queries import VIOLATION_KINDS
from proscribe.collector.storage.tables import events

log = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
BATCH = 50_000
PG_RESCAN_MARGIN = 5_000  # sequence numbers re-read on PostgreSQL (late commits)

BLOCKED_ACTIONS = frozenset({"killed", "denied", "sinkholed", "quarantined"})
REPORTED_ACTIONS = frozenset({"reported", "would_block"})


def action_class(action: str) -> str:
    """Blocked, reported, exempted or failed: the chart's series."""
    if action in BLOCKED_ACTIONS:
        return "blocked"
    if action in REPORTED_ACTIONS:
        return "reported"
    return action if action in ("exempted", "failed") else "reported"


@dataclass(frozen=True, slots=True)
class PeriodCounts:
    """Totals over whole days ``[first_day, last_day]`` (day = days since the epoch, UTC)."""

    first_day: int
    last_day: int
    per_day: dict[int, Counter[str]]  # day -> action class -> count
    actions: Counter[str]
    rules: Counter[str]
    hosts: Counter[str]
    users: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.actions.values())


class ViolationRollup:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warm_lock = threading.Lock()
        self._warmer: threading.Thread | None = None
        self._ready = threading.Event()
        self._reset()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def counted_up_to(self) -> int:
        """The highest event sequence number folded in so far (progress while warming)."""
        return self._watermark

    def warm(self, db: Database, wait: float = 0.0) -> bool:
        """Make sure the first full build runs, in a background thread (a million events take
        seconds to fold, longer than a page may take); wait up to ``wait`` seconds for it.
        Returns whether the counts are ready."""
        with self._warm_lock:
            if self._warmer is None and not self._ready.is_set():
                self._warmer = threading.Thread(
                    target=self._build, args=(db,), name="dashboard-rollup", daemon=True
                )
                self._warmer.start()
        return self._ready.wait(wait)

    def _build(self, db: Database) -> None:
        started = time.monotonic()
        try:
            with db.read() as conn:
                folded = self.refresh(conn)
        except Exception:  # a database hiccup must not leave the dashboard stuck: retry later
            log.exception("building the dashboard's violation counts failed; will retry")
            with self._warm_lock:
                self._warmer = None
            return
        log.info(
            "dashboard counts ready: %d violations in %.1f s", folded, time.monotonic() - started
        )
        self._ready.set()

    def _reset(self) -> None:
        self._watermark = 0
        self._min_seq: int | None = None
        self._recent: set[int] = set()
        self._all: dict[str, Counter[str]] = {
            "rules": Counter(),
            "hosts": Counter(),
            "users": Counter(),
        }
        self._days: dict[int, dict[str, Counter[str]]] = defaultdict(
            lambda: {
                "actions": Counter(),
                "exact": Counter(),  # "kind/action/severity" -> count: which days hold a match
                "rules": Counter(),
                "hosts": Counter(),
                "users": Counter(),
            }
        )

    def refresh(self, conn: Connection) -> int:
        """Fold in rows stored since the last call; returns how many were folded."""
        with self._lock:
            low = conn.execute(select(func.min(events.c.seq))).scalar_one()
            low = None if low is None else int(low)
            if self._min_seq is not None and (low is None or low > self._min_seq):
                log.info("events were purged (lowest seq %s -> %s): rebuilding", self._min_seq, low)
                self._reset()
            if self._min_seq is None:
                self._min_seq = low
            margin = PG_RESCAN_MARGIN if conn.dialect.name == "postgresql" else 0
            folded = 0
            start = max(0, self._watermark - margin)
            while True:
                rows = conn.execute(
                    select(
                        events.c.seq,
                        events.c.time_us,
                        events.c.kind,
                        events.c.action,
                        events.c.rule,
                        events.c.hostname,
                        events.c.username,
                        events.c.severity,
                    )
                    .where(events.c.seq > start)
                    .order_by(events.c.seq)
                    .limit(BATCH)
                ).all()
                if not rows:
                    break
                folded += self._fold(rows, margin)
                start = int(rows[-1].seq)
                if len(rows) < BATCH:
                    break
            if margin:
                self._recent = {s for s in self._recent if s > self._watermark - margin}
            return folded

    def _fold(self, rows: Iterable[Any], margin: int) -> int:
        folded = 0
        for row in rows:
            seq: int = row[0]
            time_us: int = row[1]
            kind, action, rule, host, user, severity = row[2:]
            seen = not margin or seq in self._recent or seq <= self._watermark - margin
            if seq <= self._watermark and seen:
                continue
            if margin:
                self._recent.add(seq)
            self._watermark = max(self._watermark, seq)
            if kind not in VIOLATION_KINDS:
                continue
            day = self._days[time_us // DAY_US]
            day["actions"][action_class(action)] += 1
            # kind, action and severity are enumerations (checked at ingest): "/" is safe.
            day["exact"][f"{kind}/{action}/{severity}"] += 1
            for name, value in (("rules", rule), ("hosts", host), ("users", user)):
                if value:
                    day[name][value] += 1
                    self._all[name][value] += 1
            folded += 1
        return folded

    def period(self, first_day: int, last_day: int) -> PeriodCounts:
        per_day: dict[int, Counter[str]] = {}
        totals = {name: Counter[str]() for name in ("actions", "exact", "rules", "hosts", "users")}
        with self._lock:
            for day in range(first_day, last_day + 1):
                counters = self._days.get(day)
                if counters is None:
                    per_day[day] = Counter()
                    continue
                per_day[day] = Counter(counters["actions"])
                for name, counter in counters.items():
                    totals[name].update(counter)
        return PeriodCounts(
            first_day,
            last_day,
            per_day,
            totals["actions"],
            totals["rules"],
            totals["hosts"],
            totals["users"],
        )

    def days_with(
        self,
        kind: str | None,
        action: str | None,
        severity: str | None,
        first_day: int | None,
        last_day: int | None,
    ) -> list[int]:
        """Days (newest first) holding at least one violation with this kind, action and
        severity (``None``: any), so a filter on these low-cardinality columns (which have no
        index of their own) reads only those days instead of the whole period."""
        wanted = (kind, action, severity)
        found = []
        with self._lock:
            for day, counters in self._days.items():
                if (first_day is not None and day < first_day) or (
                    last_day is not None and day > last_day
                ):
                    continue
                if any(
                    n
                    and all(
                        w is None or w == v for w, v in zip(wanted, key.split("/"), strict=True)
                    )
                    for key, n in counters["exact"].items()
                ):
                    found.append(day)
        return sorted(found, reverse=True)

    def known(self, name: str, limit: int = 500) -> list[str]:
        """The most frequent values of ``rules``/``hosts``/``users`` ever seen (filter hints)."""
        with self._lock:
            return sorted(value for value, _ in self._all[name].most_common(limit))
