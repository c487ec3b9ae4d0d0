"""The inventory: the hosts that must be covered, imported from CSV (hostname, asset id,
owner, group, and optionally machine id).

An entry is matched to an enrolled agent by machine identity when the entry gives one (the
agent sends ``/etc/machine-id`` or its own persisted id at enrollment and in heartbeats), else
by hostname (case-insensitive) — every view says which. An entry no agent matches is a host
that was never enrolled. A re-import replaces the whole inventory (the file is the truth).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from proscribe.collector.storage.tables import inventory

COLUMNS = ("hostname", "asset_id", "owner", "group")
OPTIONAL = ("machine_id",)
MAX_ROWS = 100_000
_MACHINE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


class InventoryError(ValueError):
    """One line naming the row and field at fault, and the fix."""


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    hostname: str
    asset_id: str
    owner: str
    group: str
    machine_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "asset_id": self.asset_id,
            "owner": self.owner,
            "group": self.group,
            "machine_id": self.machine_id,
        }


def parse_csv(text: str, source: str = "inventory") -> list[InventoryEntry]:
    """Parse and check the whole file before anything is stored; InventoryError names the
    first bad row (``source:line``)."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InventoryError(
            f"{source}: the header lacks {', '.join(missing)} "
            f"(fix: the first line must name {', '.join(COLUMNS)}[, machine_id])"
        )
    reader.fieldnames = header
    out: list[InventoryEntry] = []
    seen: set[str] = set()
    for number, row in enumerate(reader, start=2):
        if len(out) >= MAX_ROWS:
            raise InventoryError(f"{source}: more than {MAX_ROWS} rows (fix: split the file)")
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        hostname = values.get("hostname", "")
        if not _HOSTNAME.match(hostname):
            raise InventoryError(
                f"{source}:{number}: hostname {hostname[:80]!r} is not a host name "
                "(fix: letters, digits, '.', '-', '_')"
            )
        key = hostname.lower()
        if key in seen:
            raise InventoryError(
                f"{source}:{number}: hostname {hostname!r} appears twice (fix: one row per host)"
            )
        seen.add(key)
        for name in ("asset_id", "owner", "group"):
            if len(values.get(name, "")) > 256 or "\x00" in values.get(name, ""):
                raise InventoryError(
                    f"{source}:{number}: {name} is longer than 256 characters or has a NUL"
                )
        machine_id = values.get("machine_id") or None
        if machine_id is not None and not _MACHINE_ID.match(machine_id):
            raise InventoryError(
                f"{source}:{number}: machine_id {machine_id[:80]!r} is not a machine id "
                "(fix: the 32 hex digits of /etc/machine-id, or leave it empty)"
            )
        out.append(
            InventoryEntry(
                hostname,
                values.get("asset_id", ""),
                values.get("owner", ""),
                values.get("group", ""),
                machine_id,
            )
        )
    return out


def replace_inventory(
    conn: Connection, entries: Sequence[InventoryEntry], *, now_us: int, by: str
) -> int:
    conn.execute(delete(inventory))
    if entries:
        conn.execute(
            insert(inventory),
            [
                {
                    "hostname": e.hostname,
                    "asset_id": e.asset_id,
                    "owner": e.owner,
                    "group_name": e.group,
                    "machine_id": e.machine_id,
                    "imported_us": now_us,
                    "imported_by": by,
                }
                for e in entries
            ],
        )
    return len(entries)


def list_inventory(conn: Connection) -> list[InventoryEntry]:
    rows = conn.execute(select(inventory).order_by(inventory.c.hostname)).all()
    return [
        InventoryEntry(r.hostname, r.asset_id, r.owner, r.group_name, r.machine_id) for r in rows
    ]


def match_inventory(
    entries: Iterable[InventoryEntry], agent_rows: Iterable[Any], hosts: Mapping[str, Any]
) -> dict[str, tuple[InventoryEntry, str]]:
    """``agent_id → (entry, "machine id" | "hostname")`` for the agents (not revoked first)
    that match an entry. Machine identity first: an entry with a machine id matches only that
    machine; an entry without one matches by hostname (case-insensitive)."""
    by_machine = {e.machine_id: e for e in entries if e.machine_id}
    by_name = {e.hostname.lower(): e for e in entries if not e.machine_id}
    taken: set[str] = set()
    out: dict[str, tuple[InventoryEntry, str]] = {}
    ordered = sorted(agent_rows, key=lambda r: r.revoked_us is not None)
    for row in ordered:
        host = hosts.get(row.agent_id)
        machine = row.machine_id or (host.machine_id if host is not None else None)
        entry, how = None, None
        if machine and machine in by_machine:
            entry, how = by_machine[machine], "machine id"
        elif row.hostname.lower() in by_name:
            entry, how = by_name[row.hostname.lower()], "hostname"
        if entry is not None and entry.hostname not in taken:
            taken.add(entry.hostname)
            out[row.agent_id] = (entry, how or "hostname")
    return out
