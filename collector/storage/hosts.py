"""The host table, kept by heartbeats: one row per agent, last state wins.

A host whose policy serial goes *down* is flagged ``serial_regressed``: the collector never
hands out a lower serial, so a rollback means someone tampered with the agent's state. The
flag stays until the host reports a serial at least as high as the highest it ever had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import hosts
from sqlalchemy import Connection, and_, case, false, or_, true


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


def record_heartbeat(conn: Connection, hb: HeartbeatRecord, now_us: int) -> bool:
    """Upsert the host row in one statement; returns whether the host is flagged as having
    rolled back. The regression rule runs in SQL against the stored row, so concurrent
    replicas cannot interleave a read and a write."""
    values: dict[str, Any] = {
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
    }
    stmt = dialect_insert(conn, hosts).values(**values)
    new = stmt.excluded
    highest = hosts.c.max_policy_serial
    update = {k: new[k] for k in values if k not in ("agent_id", "first_seen_us")}
    update["max_policy_serial"] = case(
        (
            and_(
                new.policy_serial.is_not(None), or_(highest.is_(None), new.policy_serial > highest)
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
    stmt = stmt.on_conflict_do_update(index_elements=["agent_id"], set_=update).returning(
        hosts.c.serial_regressed
    )
    return bool(conn.execute(stmt).scalar_one())
