"""Signed policy bundles as uploaded by an admin; the current one is the highest serial.

The collector stores and serves bytes. It never signs: agents verify every bundle against
their own trusted keys, so a compromised collector can withhold a policy but not forge one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select

from proscribe.collector.storage.tables import policies


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    serial: int
    policy_id: str
    sha256: str
    policy: bytes
    signature: bytes
    uploaded_us: int
    uploaded_by: str


def current_policy(conn: Connection) -> StoredPolicy | None:
    row = conn.execute(select(policies).order_by(policies.c.serial.desc()).limit(1)).first()
    if row is None:
        return None
    return StoredPolicy(
        int(row.serial),
        row.policy_id,
        row.sha256,
        bytes(row.policy),
        bytes(row.signature),
        row.uploaded_us,
        row.uploaded_by,
    )


_CURRENT_REF = (
    select(policies.c.serial, policies.c.sha256).order_by(policies.c.serial.desc()).limit(1)
)


def current_policy_ref(conn: Connection) -> tuple[int, str] | None:
    """``(serial, sha256)`` of the current policy without loading its bytes (heartbeats)."""
    row = conn.execute(_CURRENT_REF).first()
    return None if row is None else (int(row.serial), str(row.sha256))


def highest_serial(conn: Connection) -> int | None:
    value = conn.execute(select(func.max(policies.c.serial))).scalar_one()
    return None if value is None else int(value)


def store_policy(conn: Connection, policy: StoredPolicy) -> None:
    """Insert; the serial primary key makes a concurrent upload of the same serial fail."""
    conn.execute(
        insert(policies).values(
            serial=policy.serial,
            policy_id=policy.policy_id,
            sha256=policy.sha256,
            policy=policy.policy,
            signature=policy.signature,
            uploaded_us=policy.uploaded_us,
            uploaded_by=policy.uploaded_by,
        )
    )
