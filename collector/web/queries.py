"""Queries the dashboard needs beyond :mod:`proscribe.collector.storage.queries`.

Everything here is bounded: coverage figures are aggregates over the host table (one row per
agent), the policy history is small, and event queries always carry a time range and a limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select

from proscribe.collector.storage.queries import (
    MAX_PAGE,
    HostCoverage,
    ViolationFilter,
    ViolationPage,
    decode_cursor,
    encode_cursor,
    filter_conditions,
    host_coverage,
)
from proscribe.collector.storage.tables import agents, events, hosts, policies, users
from proscribe.collector.storage.users import Principal


@dataclass(frozen=True, slots=True)
class Coverage:
    """Fleet coverage at one moment (the overview tiles and the report's cover page)."""

    enrolled: int  # agents enrolled and not revoked
    reporting: int  # of those, heartbeat within the window
    stale: int  # enrolled but silent for longer than the window (or never heard from)
    old_serial: int  # reporting a policy serial below the current one (or none at all)
    dropped: int  # hosts whose spool dropped events
    regressed: int  # hosts whose policy serial went down (tampering)

    @property
    def reporting_pct(self) -> float:
        return 100.0 * self.reporting / self.enrolled if self.enrolled else 0.0


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    serial: int
    policy_id: str
    sha256: str
    uploaded_us: int
    uploaded_by: str


def user_by_id(conn: Connection, user_id: int) -> Principal | None:
    """The session's user, if still enabled (roles are read fresh on every request)."""
    row = conn.execute(
        select(users.c.user_id, users.c.name, users.c.role).where(
            users.c.user_id == user_id, users.c.disabled_us.is_(None)
        )
    ).first()
    return None if row is None else Principal(int(row.user_id), row.name, row.role)


def coverage(
    conn: Connection, *, now_us: int, window_us: int, current_serial: int | None
) -> Coverage:
    active = agents.c.revoked_us.is_(None)
    enrolled = int(
        conn.execute(select(func.count()).select_from(agents).where(active)).scalar_one()
    )
    fresh = hosts.c.last_seen_us >= now_us - window_us
    old = (
        or_(hosts.c.policy_serial.is_(None), hosts.c.policy_serial < current_serial)
        if current_serial is not None
        else hosts.c.policy_serial.is_(None)
    )
    stmt = (
        select(
            func.count(case((fresh, 1))),
            func.count(case((and_(fresh, old), 1))),
            func.count(case((hosts.c.dropped > 0, 1))),
            func.count(case((hosts.c.serial_regressed.is_(True), 1))),
        )
        .select_from(hosts.join(agents, agents.c.agent_id == hosts.c.agent_id))
        .where(active)
    )
    reporting, old_serial, dropped, regressed = (int(v) for v in conn.execute(stmt).one())
    return Coverage(
        enrolled=enrolled,
        reporting=reporting,
        stale=max(0, enrolled - reporting),
        old_serial=old_serial,
        dropped=dropped,
        regressed=regressed,
    )


def _host(r: Any, now_us: int, window_us: int) -> HostCoverage:
    return host_coverage(r, now_us=now_us, heartbeat_window_us=window_us)


def host_detail(
    conn: Connection, agent_id: str, *, now_us: int, window_us: int
) -> HostCoverage | None:
    row = conn.execute(select(hosts).where(hosts.c.agent_id == agent_id)).first()
    return None if row is None else _host(row, now_us, window_us)


@dataclass(frozen=True, slots=True)
class AgentSummary:
    agent_id: str
    hostname: str
    os: str
    agent_version: str
    enrolled_us: int
    revoked_us: int | None
    last_seen_us: int | None


def agents_with_last_seen(conn: Connection, limit: int = 5000) -> list[AgentSummary]:
    """Enrolled agents (revoked ones too) with their last heartbeat, for hosts and admin."""
    stmt = (
        select(
            agents.c.agent_id,
            agents.c.hostname,
            agents.c.os,
            agents.c.agent_version,
            agents.c.enrolled_us,
            agents.c.revoked_us,
            hosts.c.last_seen_us,
        )
        .select_from(agents.outerjoin(hosts, hosts.c.agent_id == agents.c.agent_id))
        .order_by(agents.c.hostname, agents.c.agent_id)
        .limit(limit)
    )
    return [
        AgentSummary(
            r.agent_id,
            r.hostname,
            r.os,
            r.agent_version,
            int(r.enrolled_us),
            None if r.revoked_us is None else int(r.revoked_us),
            None if r.last_seen_us is None else int(r.last_seen_us),
        )
        for r in conn.execute(stmt)
    ]


def policy_history(conn: Connection, limit: int = 200) -> list[PolicyRecord]:
    """Uploaded policies, newest serial first, without their bytes."""
    stmt = (
        select(
            policies.c.serial,
            policies.c.policy_id,
            policies.c.sha256,
            policies.c.uploaded_us,
            policies.c.uploaded_by,
        )
        .order_by(policies.c.serial.desc())
        .limit(limit)
    )
    return [
        PolicyRecord(int(r.serial), r.policy_id, r.sha256, int(r.uploaded_us), r.uploaded_by)
        for r in conn.execute(stmt)
    ]


def serials_in_force(
    history: list[PolicyRecord], since_us: int, until_us: int
) -> list[PolicyRecord]:
    """The policies the collector served at some moment of ``[since, until)``: each serial is
    in force from its upload until the next higher serial's upload."""
    ordered = sorted(history, key=lambda p: p.serial)
    result = []
    for i, record in enumerate(ordered):
        replaced_us = ordered[i + 1].uploaded_us if i + 1 < len(ordered) else None
        if record.uploaded_us < until_us and (replaced_us is None or replaced_us > since_us):
            result.append(record)
    return result


DAY_US = 86_400 * 1_000_000


def violations_in_days(
    conn: Connection,
    flt: ViolationFilter,
    days: list[int],
    *,
    cursor: str | None = None,
    limit: int = 100,
) -> ViolationPage:
    """:func:`list_violations`, reading only the given UTC days (newest first).

    For filters on kind/action/severity alone, which have no index of their own: the rollup
    knows which days hold a match, so a rare value costs a few days' rows instead of the
    whole period's. Same items, order and cursors as :func:`list_violations`.
    """
    limit = max(1, min(limit, MAX_PAGE))
    after = decode_cursor(cursor) if cursor else None
    found: list[tuple[int, int, dict[str, Any]]] = []
    base = filter_conditions(flt)
    for day in days:
        lo, hi = day * DAY_US, (day + 1) * DAY_US
        if flt.since_us is not None:
            lo = max(lo, flt.since_us)
        if flt.until_us is not None:
            hi = min(hi, flt.until_us)
        if lo >= hi or (after is not None and lo > after[0]):
            continue
        conds = [*base, events.c.time_us >= lo, events.c.time_us < hi]
        if after is not None:
            t, s = after
            conds.append(or_(events.c.time_us < t, and_(events.c.time_us == t, events.c.seq < s)))
        rows = conn.execute(
            select(events.c.seq, events.c.time_us, events.c.received_us, events.c.body)
            .where(*conds)
            .order_by(events.c.time_us.desc(), events.c.seq.desc())
            .limit(limit + 1 - len(found))
        ).all()
        for row in rows:
            body = json.loads(row.body)
            body["received_us"] = int(row.received_us)
            found.append((int(row.time_us), int(row.seq), body))
        if len(found) > limit:
            break
    next_cursor = None
    if len(found) > limit:
        t, s, _ = found[limit - 1]
        next_cursor = encode_cursor(t, s)
    return ViolationPage([body for _, _, body in found[:limit]], next_cursor)
