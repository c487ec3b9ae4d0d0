"""Forwarding state for people: lag, counts, last error, lease holder, recent dead letters.

Read from the database, so every replica (and ``proscribe collector forward status``, which
runs beside them) shows the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from proscribe.collector.forward.base import redact_url
from proscribe.collector.forward.settings import ForwardSettings
from proscribe.collector.storage.tables import events, forward_dead_letters, forward_state

# Counting a backlog reads it: a scrape of /metrics every 15 s must not walk 10M rows.
LAG_COUNT_CAP = 1_000_000


@dataclass(frozen=True, slots=True)
class ForwardStatus:
    name: str
    kind: str
    format: str
    destination: str  # scheme://host:port only (webhook URLs carry secrets in their paths)
    configured: bool  # False: a row left by a [[forward]] table since removed
    started: bool  # False: no replica has run it yet
    cursor_seq: int = 0
    lag_events: int = 0  # at most LAG_COUNT_CAP
    lag_seconds: float = 0.0
    sent: int = 0
    skipped: int = 0
    dead_letters: int = 0
    last_sent_us: int | None = None
    last_error: str | None = None
    last_error_us: int | None = None
    lease_owner: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def forward_status(
    conn: Connection, forwards: tuple[ForwardSettings, ...], now_us: int
) -> list[ForwardStatus]:
    rows = {str(r.name): r for r in conn.execute(select(forward_state)).all()}
    out: list[ForwardStatus] = []
    names = [f.name for f in forwards] + sorted(set(rows) - {f.name for f in forwards})
    by_name = {f.name: f for f in forwards}
    for name in names:
        settings = by_name.get(name)
        row = rows.get(name)
        base: dict[str, Any] = {
            "name": name,
            "kind": settings.kind if settings else "?",
            "format": settings.format if settings else "?",
            "destination": redact_url(settings.url) if settings else "(not configured)",
            "configured": settings is not None,
            "started": row is not None,
        }
        if row is None:
            out.append(ForwardStatus(**base))
            continue
        cursor = int(row.cursor_seq)
        pending = select(events.c.seq).where(events.c.seq > cursor).limit(LAG_COUNT_CAP)
        lag = int(conn.execute(select(func.count()).select_from(pending.subquery())).scalar_one())
        oldest = conn.execute(
            select(events.c.received_us)
            .where(events.c.seq > cursor)
            .order_by(events.c.seq)
            .limit(1)
        ).scalar_one_or_none()
        lease_live = row.lease_owner is not None and int(row.lease_until_us) >= now_us
        out.append(
            ForwardStatus(
                **base,
                cursor_seq=cursor,
                lag_events=lag,
                lag_seconds=max(0.0, (now_us - int(oldest)) / 1e6) if oldest is not None else 0.0,
                sent=int(row.sent),
                skipped=int(row.skipped),
                dead_letters=int(row.dead_letters),
                last_sent_us=row.last_sent_us,
                last_error=row.last_error,
                last_error_us=row.last_error_us,
                lease_owner=row.lease_owner if lease_live else None,
            )
        )
    return out


def recent_dead_letters(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(forward_dead_letters).order_by(forward_dead_letters.c.seq.desc()).limit(limit)
    ).all()
    return [dict(r._mapping) for r in rows]


def render_metrics(statuses: list[ForwardStatus]) -> str:
    """Prometheus lines, labelled by forwarder name."""
    series = [
        ("proscribe_forward_lag_events", "gauge", "Stored events not yet settled.", "lag_events"),
        (
            "proscribe_forward_lag_seconds",
            "gauge",
            "Age of the oldest stored event not yet settled.",
            "lag_seconds",
        ),
        (
            "proscribe_forward_sent_total",
            "counter",
            "Events acknowledged by the destination.",
            "sent",
        ),
        (
            "proscribe_forward_skipped_total",
            "counter",
            "Events below min_severity, not sent.",
            "skipped",
        ),
        (
            "proscribe_forward_dead_letters_total",
            "counter",
            "Events that could not be rendered or were refused, skipped.",
            "dead_letters",
        ),
    ]
    out: list[str] = []
    for metric, kind, help_text, attr in series:
        out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for status in statuses:
            out.append(f'{metric}{{forwarder="{status.name}"}} {getattr(status, attr)}')
    out += [
        "# HELP proscribe_forward_failing 1 while the last attempt failed (last_error set).",
        "# TYPE proscribe_forward_failing gauge",
    ]
    for status in statuses:
        out.append(
            f'proscribe_forward_failing{{forwarder="{status.name}"}} {int(bool(status.last_error))}'
        )
    out += [
        "# HELP proscribe_forward_last_sent_timestamp_seconds Last acknowledged send.",
        "# TYPE proscribe_forward_last_sent_timestamp_seconds gauge",
    ]
    for status in statuses:
        value = status.last_sent_us / 1e6 if status.last_sent_us else 0
        out.append(
            f'proscribe_forward_last_sent_timestamp_seconds{{forwarder="{status.name}"}} {value}'
        )
    return "\n".join(out) + "\n"
