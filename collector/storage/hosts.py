"""The host table, kept by heartbeats: one row per agent, last state wins.

A host whose policy serial goes *down* is flagged ``serial_regressed``: the collector never
hands out a lower serial, so a rollback means someone tampered with the agent's state. The
flag stays until the host reports a serial at least as high as the highest it ever had.

Every heartbeat that changes something a compliance officer asks about (policy id, serial or
hash, mode, agent version, hostname, sensor states and liveness, the active guard, dropped
events), that shows drops or fail-open decisions growing, that says goodbye or comes after a
goodbye, or that ends a silence longer than the heartbeat window adds a row to
``host_history``: the host's heartbeat timeline, small
because an unchanged heartbeat adds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, false, insert, or_, select, true

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import host_history, hosts

# Spool drop reasons that lose nothing (a repeat folded into the event it repeats).
HARMLESS_DROPS = frozenset({"spool.folded"})


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    agent_id: str
    hostname: str
    os: str
    agent_version: str
    mode: str | None
    policy_id: str | None
    policy_serial: int | None
    policy_sha256: str | None
    policy_stale: bool
    sensors: dict[str, Any]
    spool_depth: int
    spool_bytes: int
    dropped: int
    agent_time: str | None
    machine_id: str | None = None
    health: dict[str, Any] | None = None  # the heartbeat's health section, as sent
    goodbye_by: str | None = None  # set on the goodbye heartbeat of a clean stop


UPSERT_COLUMNS = (
    "agent_id",
    "hostname",
    "os",
    "agent_version",
    "mode",
    "policy_id",
    "policy_serial",
    "policy_sha256",
    "policy_stale",
    "sensors",
    "spool_depth",
    "spool_bytes",
    "dropped",
    "first_seen_us",
    "last_seen_us",
    "agent_time",
    "max_policy_serial",
    "serial_regressed",
    "machine_id",
    "health",
    "goodbye_us",
    "goodbye_by",
)
_COLUMNS = UPSERT_COLUMNS
_UPSERTS: dict[str, Any] = {}


def _upsert(conn: Connection) -> Any:
    """The heartbeat upsert, built once per dialect with bind parameters: constructing this
    statement costs more than running it (~1.6 ms of SQLAlchemy expression building)."""
    stmt = _UPSERTS.get(conn.dialect.name)
    if stmt is not None:
        return stmt
    insert = dialect_insert(conn, hosts).values({c: bindparam(c) for c in _COLUMNS})
    stmt = insert.on_conflict_do_update(
        index_elements=["agent_id"], set_=upsert_set(insert.excluded)
    ).returning(hosts.c.serial_regressed)
    _UPSERTS[conn.dialect.name] = stmt
    return stmt


def upsert_set(new: Any) -> dict[str, Any]:
    """The SET clauses of the host upsert (``new``: the ``excluded`` row): last state wins,
    except the highest serial ever seen and the regression flag, judged against the stored
    row in the statement itself (shared by the single-row and the batch upsert)."""
    highest = hosts.c.max_policy_serial
    update: dict[str, Any] = {c: new[c] for c in _COLUMNS if c not in ("agent_id", "first_seen_us")}
    update["max_policy_serial"] = case(
        (
            and_(
                new.policy_serial.is_not(None),
                or_(highest.is_(None), new.policy_serial > highest),
            ),
            new.policy_serial,
        ),
        else_=highest,
    )
    # Lower than the highest ever seen, or no policy at all after having had one.
    update["serial_regressed"] = case(
        (highest.is_(None), false()),
        (new.policy_serial.is_(None), true()),
        (new.policy_serial < highest, true()),
        else_=false(),
    )
    return update


# Heartbeat facts whose change is worth a history row, as (column, label).
_TRACKED = (
    ("hostname", "hostname"),
    ("os", "os"),
    ("agent_version", "agent version"),
    ("mode", "mode"),
    ("policy_id", "policy id"),
    ("policy_serial", "policy serial"),
    ("policy_sha256", "policy sha256"),
    ("policy_stale", "policy stale"),
)
# What heartbeat_changes compares with: the stored host row's part that a heartbeat moves.
PREVIOUS_COLUMNS = (
    *(hosts.c[column] for column, _label in _TRACKED),
    hosts.c.sensors,
    hosts.c.dropped,
    hosts.c.last_seen_us,
    hosts.c.health,
    hosts.c.goodbye_us,
)
_PREVIOUS = select(*PREVIOUS_COLUMNS).where(hosts.c.agent_id == bindparam("agent_id"))


def _counts(health: Any, section: str) -> dict[str, int]:
    values = health.get(section) if isinstance(health, dict) else None
    if not isinstance(values, dict):
        return {}
    return {str(k): int(v) for k, v in values.items() if isinstance(v, int)}


def _alive(health: Any) -> dict[str, bool]:
    sensors = health.get("sensors") if isinstance(health, dict) else None
    if not isinstance(sensors, dict):
        return {}
    return {
        str(name): bool(entry.get("alive"))
        for name, entry in sensors.items()
        if isinstance(entry, dict)
    }


def failure_growth(before: Any, after: Any) -> dict[str, dict[str, int]]:
    """Drops and fail-open decisions that grew between two health sections. The agent's
    counters are cumulative (the spool's survive restarts, the rest start again at zero): a
    counter lower than before was reset, and its whole value is new."""
    growth: dict[str, dict[str, int]] = {}
    for section in ("drops", "fail_open"):
        old, new = _counts(before, section), _counts(after, section)
        grew = {}
        for reason, value in new.items():
            if section == "drops" and reason in HARMLESS_DROPS:
                continue
            before_value = old.get(reason, 0)
            delta = value - before_value if value >= before_value else value
            if delta > 0:
                grew[reason] = delta
        if grew:
            growth[section] = grew
    return growth


def _load(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def heartbeat_changes(
    previous: Any, hb: HeartbeatRecord, now_us: int, window_us: int | None
) -> list[tuple[str, dict[str, Any]]]:
    """The history rows this heartbeat adds, as ``(kind, detail)``; none when nothing moved.

    Kinds: ``first``; ``resumed`` (after a silence longer than the window); ``started``
    (the first heartbeat after a goodbye); ``changed`` (with ``[before, after]`` per fact,
    including the active guard and each sensor's liveness); ``failures`` (drops or fail-open
    decisions that grew since the last heartbeat); ``stopped`` (a goodbye: who stopped it)."""
    if previous is None:
        first: dict[str, Any] = {
            "hostname": hb.hostname,
            "agent version": hb.agent_version,
            "mode": hb.mode,
            "policy id": hb.policy_id,
            "policy serial": hb.policy_serial,
            "sensors": hb.sensors,
        }
        if hb.health is not None:
            first["guard"] = hb.health.get("guard")
            first["sensors alive"] = _alive(hb.health)
        out = [("first", first)]
        if hb.goodbye_by is not None:
            out.append(("stopped", {"by": hb.goodbye_by}))
        return out
    out = []
    if window_us is not None and now_us - int(previous.last_seen_us) > window_us:
        out.append(("resumed", {"silent_s": (now_us - int(previous.last_seen_us)) // 1_000_000}))
    elif previous.goodbye_us is not None and hb.goodbye_by is None:
        out.append(("started", {"stopped_s": (now_us - int(previous.goodbye_us)) // 1_000_000}))
    changed: dict[str, Any] = {}
    for column, label in _TRACKED:
        before, after = previous._mapping[column], getattr(hb, column)
        if column == "policy_stale":
            before, after = bool(before), bool(after)
        if before != after:
            changed[label] = [before, after]
    sensors_before = _load(previous.sensors)
    for name in sorted(set(sensors_before) | set(hb.sensors)):
        if sensors_before.get(name) != hb.sensors.get(name):
            changed[f"sensor {name}"] = [sensors_before.get(name), hb.sensors.get(name)]
    if hb.dropped != int(previous.dropped):
        changed["dropped events"] = [int(previous.dropped), hb.dropped]
    health_before = _load(previous.health)
    if hb.health is not None:
        if health_before.get("guard") != hb.health.get("guard"):
            changed["guard"] = [health_before.get("guard"), hb.health.get("guard")]
        alive_before, alive_after = _alive(health_before), _alive(hb.health)
        for name in sorted(set(alive_before) | set(alive_after)):
            if alive_before.get(name) != alive_after.get(name):
                changed[f"sensor alive {name}"] = [alive_before.get(name), alive_after.get(name)]
    if changed:
        out.append(("changed", changed))
    if hb.health is not None and health_before:  # the first health section is the baseline
        growth = failure_growth(health_before, hb.health)
        if growth:
            out.append(("failures", growth))
    if hb.goodbye_by is not None:
        out.append(("stopped", {"by": hb.goodbye_by}))
    return out


def _health_to_store(
    previous: Any, hb: HeartbeatRecord, changes: list[tuple[str, dict[str, Any]]], now_us: int
) -> str | None:
    """The health section as stored: the agent's, plus what the collector keeps about it (when
    drops or fail-open decisions last grew, and by how much) under ``collector``."""
    if hb.health is None:
        return None
    stored = {k: v for k, v in hb.health.items() if k != "collector"}
    kept = _load(previous.health).get("collector") if previous is not None else None
    for kind, detail in changes:
        if kind == "failures":
            kept = {"last_failure_us": now_us, "last_failure": detail}
    if isinstance(kept, dict):
        stored["collector"] = kept
    return json.dumps(stored, sort_keys=True, default=str)


def record_heartbeat(
    conn: Connection, hb: HeartbeatRecord, now_us: int, window_us: int | None = None
) -> bool:
    """Upsert the host row in one statement; returns whether the host is flagged as having
    rolled back. The regression rule runs in SQL against the stored row, so concurrent
    replicas cannot interleave a read and a write. What changed since the stored row goes to
    ``host_history`` (``window_us``: a longer gap is recorded as a silence)."""
    previous = conn.execute(_PREVIOUS, {"agent_id": hb.agent_id}).first()
    changes = heartbeat_changes(previous, hb, now_us, window_us)
    if changes:
        conn.execute(insert(host_history), history_rows(hb.agent_id, changes, now_us))
    params = host_params(previous, hb, changes, now_us)
    return bool(conn.execute(_upsert(conn), params).scalar_one())


def history_rows(
    agent_id: str, changes: list[tuple[str, dict[str, Any]]], now_us: int
) -> list[dict[str, Any]]:
    """``host_history`` rows for :func:`heartbeat_changes`' output."""
    return [
        {
            "agent_id": agent_id,
            "time_us": now_us,
            "kind": kind,
            "detail": json.dumps(detail, sort_keys=True, default=str),
        }
        for kind, detail in changes
    ]


def host_params(
    previous: Any, hb: HeartbeatRecord, changes: list[tuple[str, dict[str, Any]]], now_us: int
) -> dict[str, Any]:
    """The upsert's values for one heartbeat (``UPSERT_COLUMNS``); ``max_policy_serial`` and
    ``serial_regressed`` are only the first row's: an existing row's are decided in SQL."""
    return {
        "agent_id": hb.agent_id,
        "hostname": hb.hostname,
        "os": hb.os,
        "agent_version": hb.agent_version,
        "mode": hb.mode,
        "policy_id": hb.policy_id,
        "policy_serial": hb.policy_serial,
        "policy_sha256": hb.policy_sha256,
        "policy_stale": hb.policy_stale,
        "sensors": json.dumps(hb.sensors, sort_keys=True),
        "spool_depth": hb.spool_depth,
        "spool_bytes": hb.spool_bytes,
        "dropped": hb.dropped,
        "first_seen_us": now_us,
        "last_seen_us": now_us,
        "agent_time": hb.agent_time,
        "max_policy_serial": hb.policy_serial,
        "serial_regressed": False,
        "machine_id": hb.machine_id,
        "health": _health_to_store(previous, hb, changes, now_us),
        "goodbye_us": now_us if hb.goodbye_by is not None else None,
        "goodbye_by": hb.goodbye_by,
    }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    time_us: int
    kind: str
    detail: dict[str, Any]


def host_history_entries(conn: Connection, agent_id: str, limit: int = 100) -> list[HistoryEntry]:
    """A host's heartbeat history, newest first."""
    rows = conn.execute(
        select(host_history.c.time_us, host_history.c.kind, host_history.c.detail)
        .where(host_history.c.agent_id == agent_id)
        .order_by(host_history.c.time_us.desc(), host_history.c.seq.desc())
        .limit(limit)
    )
    out = []
    for row in rows:
        try:
            detail = json.loads(row.detail)
        except ValueError:
            detail = {}
        if not isinstance(detail, dict):
            detail = {}
        out.append(HistoryEntry(int(row.time_us), str(row.kind), detail))
    return out
