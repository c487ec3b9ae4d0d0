"""The overview's numbers, read from the violation counts kept at ingest (storage/counts.py).

"Violations per day, by action; top rules, hosts and users" over a month of a million events
must answer in well under 300 ms: grouping the events per request cannot do that, so the
overview groups :data:`violation_counts` instead (one row per day × kind × action × severity ×
rule × host × user that occurred). The table is written in the events' own transaction, so
every replica reads the same exact numbers the moment an event is committed: no cache, no
start-up build, no margin for late commits on PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import Connection, and_, func, select

from proscribe.collector.storage.counts import DAY_US
from proscribe.collector.storage.tables import violation_counts as vc

__all__ = ["DAY_US", "PeriodCounts", "action_class", "days_with", "known", "period"]

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


def period(conn: Connection, first_day: int, last_day: int) -> PeriodCounts:
    in_period = and_(vc.c.day >= first_day, vc.c.day <= last_day)
    per_day: dict[int, Counter[str]] = {day: Counter() for day in range(first_day, last_day + 1)}
    actions: Counter[str] = Counter()
    for day, action, n in conn.execute(
        select(vc.c.day, vc.c.action, func.sum(vc.c.n))
        .where(in_period)
        .group_by(vc.c.day, vc.c.action)
    ):
        cls = action_class(str(action))
        per_day.setdefault(int(day), Counter())[cls] += int(n)
        actions[cls] += int(n)
    tops: dict[str, Counter[str]] = {}
    for name, column in (("rules", vc.c.rule), ("hosts", vc.c.hostname), ("users", vc.c.username)):
        tops[name] = Counter(
            {
                str(value): int(n)
                for value, n in conn.execute(
                    select(column, func.sum(vc.c.n)).where(in_period, column != "").group_by(column)
                )
            }
        )
    return PeriodCounts(
        first_day, last_day, per_day, actions, tops["rules"], tops["hosts"], tops["users"]
    )


def days_with(
    conn: Connection,
    kind: str | None,
    action: str | None,
    severity: str | None,
    first_day: int | None,
    last_day: int | None,
) -> list[int]:
    """Days (newest first) holding at least one violation with this kind, action and
    severity (``None``: any), so a filter on these low-cardinality columns (which have no
    index of their own) reads only those days instead of the whole period."""
    conds = [vc.c.n > 0]
    for column, value in ((vc.c.kind, kind), (vc.c.action, action), (vc.c.severity, severity)):
        if value is not None:
            conds.append(column == value)
    if first_day is not None:
        conds.append(vc.c.day >= first_day)
    if last_day is not None:
        conds.append(vc.c.day <= last_day)
    rows = conn.execute(select(vc.c.day).where(*conds).distinct())
    return sorted((int(r[0]) for r in rows), reverse=True)


_KNOWN = {"rules": vc.c.rule, "hosts": vc.c.hostname, "users": vc.c.username}


def known(conn: Connection, name: str, limit: int = 500) -> list[str]:
    """The most frequent values of ``rules``/``hosts``/``users`` ever seen (filter hints)."""
    column = _KNOWN[name]
    total = func.sum(vc.c.n)
    rows = conn.execute(
        select(column, total)
        .where(column != "")
        .group_by(column)
        .order_by(total.desc())
        .limit(limit)
    )
    return sorted(str(r[0]) for r in rows)
