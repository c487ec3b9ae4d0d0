"""Enroll secrets, enrolled agents and the replay (nonce) cache.

Enroll secrets are stored as SHA-256: they are long random strings, so a fast hash is enough
and a database dump yields nothing that enrolls. Agents are stored with their public key only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import agents, enroll_secrets, nonces

SECRET_PREFIX = "pse_"  # noqa: S105 - a visible prefix, not a secret


@dataclass(frozen=True, slots=True)
class EnrollSecretInfo:
    secret_id: str
    label: str
    created_us: int
    revoked_us: int | None


@dataclass(frozen=True, slots=True)
class AgentRecord:
    agent_id: str
    public_key: str
    hostname: str
    os: str
    agent_version: str
    enrolled_us: int
    revoked_us: int | None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def create_enroll_secret(conn: Connection, label: str, now_us: int) -> tuple[str, str]:
    """A new secret; returns ``(secret_id, secret)``. The secret is not stored, only its hash."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    secret_id = secrets.token_hex(6)
    conn.execute(
        insert(enroll_secrets).values(
            secret_id=secret_id,
            secret_sha256=_sha256(secret),
            label=label,
            created_us=now_us,
            revoked_us=None,
        )
    )
    return secret_id, secret


def list_enroll_secrets(conn: Connection) -> list[EnrollSecretInfo]:
    rows = conn.execute(select(enroll_secrets).order_by(enroll_secrets.c.created_us)).all()
    return [EnrollSecretInfo(r.secret_id, r.label, r.created_us, r.revoked_us) for r in rows]


def revoke_enroll_secret(conn: Connection, secret_id: str, now_us: int) -> bool:
    result = conn.execute(
        update(enroll_secrets)
        .where(enroll_secrets.c.secret_id == secret_id, enroll_secrets.c.revoked_us.is_(None))
        .values(revoked_us=now_us)
    )
    return result.rowcount > 0


def check_enroll_secret(conn: Connection, secret: str) -> str | None:
    """The id of the active secret equal to ``secret``, else ``None``."""
    digest = _sha256(secret)
    row = conn.execute(
        select(enroll_secrets.c.secret_id, enroll_secrets.c.secret_sha256).where(
            enroll_secrets.c.secret_sha256 == digest, enroll_secrets.c.revoked_us.is_(None)
        )
    ).first()
    # The lookup is by digest already; the constant-time compare is belt and braces.
    if row is None or not hmac.compare_digest(row.secret_sha256, digest):
        return None
    return str(row.secret_id)


def enroll_agent(
    conn: Connection,
    *,
    public_key: str,
    hostname: str,
    os_name: str,
    agent_version: str,
    secret_id: str,
    now_us: int,
) -> str:
    """Register an agent's public key; re-enrolling an active key returns its existing id (its
    recorded hostname is kept: a hostname changes only through heartbeats, see
    :func:`set_agent_hostname`)."""
    existing = conn.execute(
        select(agents.c.agent_id).where(
            agents.c.public_key == public_key, agents.c.revoked_us.is_(None)
        )
    ).first()
    if existing is not None:
        conn.execute(
            update(agents)
            .where(agents.c.agent_id == existing.agent_id)
            .values(os=os_name, agent_version=agent_version)
        )
        return str(existing.agent_id)
    agent_id = uuid.uuid4().hex
    conn.execute(
        insert(agents).values(
            agent_id=agent_id,
            public_key=public_key,
            hostname=hostname,
            os=os_name,
            agent_version=agent_version,
            enrolled_us=now_us,
            enroll_secret_id=secret_id,
            revoked_us=None,
        )
    )
    return agent_id


_GET_AGENT = select(agents).where(agents.c.agent_id == bindparam("agent_id"))
_NONCE_INSERTS: dict[str, Any] = {}


def get_agent(conn: Connection, agent_id: str) -> AgentRecord | None:
    row = conn.execute(_GET_AGENT, {"agent_id": agent_id}).first()
    if row is None:
        return None
    return AgentRecord(
        row.agent_id,
        row.public_key,
        row.hostname,
        row.os,
        row.agent_version,
        row.enrolled_us,
        row.revoked_us,
    )


def set_agent_hostname(conn: Connection, agent_id: str, hostname: str) -> None:
    """The hostname events of this agent are filed under from now on (a heartbeat's)."""
    conn.execute(update(agents).where(agents.c.agent_id == agent_id).values(hostname=hostname))


def list_agents(conn: Connection) -> list[AgentRecord]:
    rows = conn.execute(select(agents).order_by(agents.c.enrolled_us)).all()
    return [
        AgentRecord(
            r.agent_id, r.public_key, r.hostname, r.os, r.agent_version, r.enrolled_us, r.revoked_us
        )
        for r in rows
    ]


def revoke_agent(conn: Connection, agent_id: str, now_us: int) -> bool:
    result = conn.execute(
        update(agents)
        .where(agents.c.agent_id == agent_id, agents.c.revoked_us.is_(None))
        .values(revoked_us=now_us)
    )
    return result.rowcount > 0


def count_agents(conn: Connection) -> int:
    stmt = select(func.count()).select_from(agents).where(agents.c.revoked_us.is_(None))
    return int(conn.execute(stmt).scalar_one())


def consume_nonce(conn: Connection, agent_id: str, nonce: str, expires_us: int) -> bool:
    """Record ``nonce``; False if it was seen before (a replay). ON CONFLICT DO NOTHING keeps
    the caller's transaction usable (no exception, no savepoint) on both databases."""
    stmt = _NONCE_INSERTS.get(conn.dialect.name)
    if stmt is None:  # built once per dialect: building costs more than running it
        stmt = (
            dialect_insert(conn, nonces)
            .values(nonce=bindparam("n"), agent_id=bindparam("a"), expires_us=bindparam("e"))
            # RETURNING, not rowcount: psycopg reports -1 for a single ON CONFLICT insert.
            .on_conflict_do_nothing(index_elements=["nonce"])
            .returning(nonces.c.nonce)
        )
        _NONCE_INSERTS[conn.dialect.name] = stmt
    row = conn.execute(stmt, {"n": nonce, "a": agent_id, "e": expires_us}).first()
    return row is not None


def purge_nonces(conn: Connection, now_us: int) -> int:
    return conn.execute(delete(nonces).where(nonces.c.expires_us < now_us)).rowcount
