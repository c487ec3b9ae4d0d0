"""Enroll secrets, enrolled agents and the replay (nonce) cache.

Enroll secrets are stored as SHA-256: they are long random strings, so a fast hash is enough
and a database dump yields nothing that enrolls. Agents are stored with their public key only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from proscribe.collector.storage.dialect import dialect_insert
from proscribe.collector.storage.tables import agents, bans, enroll_secrets, hosts, nonces

SECRET_PREFIX = "pse_"  # noqa: S105 - a visible prefix, not a secret


@dataclass(frozen=True, slots=True)
class EnrollSecretInfo:
    secret_id: str
    label: str
    created_us: int
    revoked_us: int | None
    max_uses: int | None = None
    uses: int = 0
    expires_us: int | None = None
    host_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class SecretLimits:
    """How far an enroll secret goes: uses, until when, which hostnames (a glob, any case)."""

    max_uses: int | None = None
    expires_us: int | None = None
    host_pattern: str | None = None


class EnrollRefused(Exception):
    """An enrollment the collector refuses; ``slug`` and ``status`` for the API answer."""

    def __init__(self, status: int, slug: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.slug = slug


@dataclass(frozen=True, slots=True)
class Ban:
    seq: int
    machine_id: str
    agent_id: str | None
    reason: str
    banned_us: int
    banned_by: str
    lifted_us: int | None
    lifted_by: str | None


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


def create_enroll_secret(
    conn: Connection, label: str, now_us: int, limits: SecretLimits | None = None
) -> tuple[str, str]:
    """A new secret; returns ``(secret_id, secret)``. The secret is not stored, only its hash."""
    limits = limits or SecretLimits()
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    secret_id = secrets.token_hex(6)
    conn.execute(
        insert(enroll_secrets).values(
            secret_id=secret_id,
            secret_sha256=_sha256(secret),
            label=label,
            created_us=now_us,
            revoked_us=None,
            max_uses=limits.max_uses,
            uses=0,
            expires_us=limits.expires_us,
            host_pattern=limits.host_pattern,
        )
    )
    return secret_id, secret


def list_enroll_secrets(conn: Connection) -> list[EnrollSecretInfo]:
    rows = conn.execute(select(enroll_secrets).order_by(enroll_secrets.c.created_us)).all()
    return [
        EnrollSecretInfo(
            r.secret_id,
            r.label,
            r.created_us,
            r.revoked_us,
            r.max_uses,
            int(r.uses or 0),
            r.expires_us,
            r.host_pattern,
        )
        for r in rows
    ]


def revoke_enroll_secret(conn: Connection, secret_id: str, now_us: int) -> bool:
    result = conn.execute(
        update(enroll_secrets)
        .where(enroll_secrets.c.secret_id == secret_id, enroll_secrets.c.revoked_us.is_(None))
        .values(revoked_us=now_us)
    )
    return result.rowcount > 0


def check_enroll_secret(conn: Connection, secret: str) -> str | None:
    """The id of the active secret equal to ``secret``, else ``None`` (limits not checked:
    see :func:`admit_enrollment`)."""
    row = _secret_row(conn, secret)
    return None if row is None else str(row.secret_id)


def _secret_row(conn: Connection, secret: str) -> Any:
    digest = _sha256(secret)
    row = conn.execute(
        select(enroll_secrets).where(
            enroll_secrets.c.secret_sha256 == digest, enroll_secrets.c.revoked_us.is_(None)
        )
    ).first()
    # The lookup is by digest already; the constant-time compare is belt and braces.
    if row is None or not hmac.compare_digest(row.secret_sha256, digest):
        return None
    return row


def admit_enrollment(
    conn: Connection,
    *,
    secret: str,
    public_key: str,
    hostname: str,
    machine_id: str | None,
    now_us: int,
) -> str:
    """The secret id this enrollment may use, or :class:`EnrollRefused` saying why: a wrong,
    revoked, expired or used-up secret (401), a hostname outside the secret's pattern (403), a
    key that was revoked (403: a revoked key is never accepted again), a machine that is banned
    (403: until an admin lifts the ban)."""
    row = _secret_row(conn, secret)
    if row is None:
        raise EnrollRefused(401, "bad_secret", "the enroll secret is wrong or revoked")
    if row.expires_us is not None and now_us >= int(row.expires_us):
        raise EnrollRefused(401, "bad_secret", "the enroll secret has expired")
    known = conn.execute(
        select(agents.c.agent_id, agents.c.revoked_us).where(agents.c.public_key == public_key)
    ).all()
    if any(r.revoked_us is not None for r in known):
        raise EnrollRefused(
            403,
            "revoked_key",
            "this key was revoked and is never accepted again; an admin must lift the ban on "
            "the machine before it can enroll with a new key",
        )
    renewal = any(r.revoked_us is None for r in known)
    if not renewal and row.max_uses is not None and int(row.uses or 0) >= int(row.max_uses):
        raise EnrollRefused(401, "bad_secret", "the enroll secret has been used up")
    if row.host_pattern and not fnmatch.fnmatchcase(hostname.lower(), row.host_pattern.lower()):
        raise EnrollRefused(403, "host_not_allowed", "this enroll secret is not for this hostname")
    if machine_id is not None and active_ban(conn, machine_id) is not None:
        raise EnrollRefused(
            403,
            "machine_banned",
            "this machine's agent was revoked; it may enroll again once an admin lifts the ban",
        )
    if not renewal:
        conn.execute(
            update(enroll_secrets)
            .where(enroll_secrets.c.secret_id == row.secret_id)
            .values(uses=enroll_secrets.c.uses + 1)
        )
    return str(row.secret_id)


def active_ban(conn: Connection, machine_id: str) -> Ban | None:
    row = conn.execute(
        select(bans).where(bans.c.machine_id == machine_id, bans.c.lifted_us.is_(None)).limit(1)
    ).first()
    return None if row is None else _ban(row)


def _ban(r: Any) -> Ban:
    return Ban(
        int(r.seq),
        r.machine_id,
        r.agent_id,
        r.reason,
        int(r.banned_us),
        r.banned_by,
        None if r.lifted_us is None else int(r.lifted_us),
        r.lifted_by,
    )


def list_bans(conn: Connection) -> list[Ban]:
    return [_ban(r) for r in conn.execute(select(bans).order_by(bans.c.banned_us, bans.c.seq))]


def ban_machine(
    conn: Connection, machine_id: str, *, agent_id: str | None, reason: str, by: str, now_us: int
) -> bool:
    """Ban a machine identity from enrolling; False if it is banned already."""
    if active_ban(conn, machine_id) is not None:
        return False
    conn.execute(
        insert(bans).values(
            machine_id=machine_id,
            agent_id=agent_id,
            reason=reason[:1024],
            banned_us=now_us,
            banned_by=by[:256],
            lifted_us=None,
            lifted_by=None,
        )
    )
    return True


def lift_ban(conn: Connection, machine_id: str, *, by: str, now_us: int) -> bool:
    result = conn.execute(
        update(bans)
        .where(bans.c.machine_id == machine_id, bans.c.lifted_us.is_(None))
        .values(lifted_us=now_us, lifted_by=by[:256])
    )
    return result.rowcount > 0


def machine_of(conn: Connection, agent_id: str) -> str | None:
    """The machine identity an agent gave at enrollment, else the one its heartbeats gave."""
    row = conn.execute(select(agents.c.machine_id).where(agents.c.agent_id == agent_id)).first()
    if row is not None and row.machine_id:
        return str(row.machine_id)
    row = conn.execute(select(hosts.c.machine_id).where(hosts.c.agent_id == agent_id)).first()
    return str(row.machine_id) if row is not None and row.machine_id else None


def enroll_agent(
    conn: Connection,
    *,
    public_key: str,
    hostname: str,
    os_name: str,
    agent_version: str,
    secret_id: str,
    now_us: int,
    machine_id: str | None = None,
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
            .values(os=os_name, agent_version=agent_version, machine_id=machine_id)
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
            machine_id=machine_id,
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


def enrolled_keys(
    conn: Connection, *, after: str = "", limit: int = 10_000
) -> list[tuple[str, str]]:
    """``(agent_id, public_key)`` of agents not revoked, in id order after ``after``: a page
    of the keys a replica loads when it starts (collector.app)."""
    rows = conn.execute(
        select(agents.c.agent_id, agents.c.public_key)
        .where(agents.c.revoked_us.is_(None), agents.c.agent_id > after)
        .order_by(agents.c.agent_id)
        .limit(limit)
    )
    return [(str(r.agent_id), str(r.public_key)) for r in rows]


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
