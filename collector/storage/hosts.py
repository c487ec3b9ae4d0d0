"""The host table, kept by heartbeats: one row per agent, last state wins.

A host whose policy serial goes *down* is flagged ``serial_regressed``: the collector never
hands out a lower serial, so a rollback means someone tampered with the agent's state. The
flag stays until the host reports a serial at least as high as the highest it ever had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proscribe.collector.storage.tables import hosts
from sqlalchemy import Connection, insert, select, update


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
    """Upsert the host row; returns whether the host is flagged as having rolled back."""
    previous = conn.execute(
        select(hosts.c.max_policy_serial).where(hosts.c.agent_id == hb.agent_id)
    ).first()
    values: dict[str, Any] = {
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
        "last_seen_us": now_us,
        "agent_time": hb.agent_time,
    }
    if previous is None:
        values["max_policy_serial"] = hb.policy_serial
        values["serial_regressed"] = False
        conn.execute(insert(hosts).values(agent_id=hb.agent_id, first_seen_us=now_us, **values))
        return False
    highest = previous.max_policy_serial
    serial = hb.policy_serial
    regressed = serial is not None and highest is not None and serial < highest
    if serial is not None and (highest is None or serial > highest):
        highest = serial
    # A host reporting no policy at all after having one is a regression too.
    if serial is None and highest is not None:
        regressed = True
    values["max_policy_serial"] = highest
    values["serial_regressed"] = regressed
    conn.execute(update(hosts).where(hosts.c.agent_id == hb.agent_id).values(**values))
    return regressed
