"""Admin actions that change who may talk to the collector, each recorded in the audit chain.

The HTTP API, the dashboard and the CLI all go through these, so an action is audited the same
way whichever door it came through (``via`` names the door in the audit detail).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage import audit, inventory, signers, users

__all__ = [
    "add_signer",
    "add_user",
    "create_enroll_secret",
    "disable_user",
    "import_inventory",
    "lift_ban",
    "reset_user",
    "retire_signer",
    "revoke_agent",
    "revoke_enroll_secret",
]


def _detail(via: str, **extra: Any) -> dict[str, Any]:
    return {**extra, "via": via}


def create_enroll_secret(
    conn: Connection,
    label: str,
    *,
    actor: str,
    via: str,
    now_us: int,
    limits: agent_store.SecretLimits | None = None,
) -> tuple[str, str]:
    """A new enroll secret ``(id, secret)``; only its hash is stored."""
    limits = limits or agent_store.SecretLimits()
    secret_id, secret = agent_store.create_enroll_secret(conn, label, now_us, limits)
    audit.append_audit(
        conn,
        actor=actor,
        action="enroll_secret.create",
        target=secret_id,
        detail=_detail(
            via,
            label=label,
            max_uses=limits.max_uses,
            expires_us=limits.expires_us,
            host_pattern=limits.host_pattern,
        ),
        now_us=now_us,
    )
    return secret_id, secret


def revoke_enroll_secret(
    conn: Connection, secret_id: str, *, actor: str, via: str, now_us: int
) -> bool:
    """Revoke an active secret; False when there is none with that id (nothing is audited)."""
    done = agent_store.revoke_enroll_secret(conn, secret_id, now_us)
    if done:
        audit.append_audit(
            conn,
            actor=actor,
            action="enroll_secret.revoke",
            target=secret_id,
            detail=_detail(via),
            now_us=now_us,
        )
    return done


def revoke_agent(conn: Connection, agent_id: str, *, actor: str, via: str, now_us: int) -> bool:
    """Revoke an agent's key — never accepted again — and ban its machine identity (when it
    sent one) from enrolling again under any key until an admin lifts the ban; False when no
    active agent has that id."""
    done = agent_store.revoke_agent(conn, agent_id, now_us)
    if done:
        machine = agent_store.machine_of(conn, agent_id)
        if machine is not None:
            agent_store.ban_machine(
                conn,
                machine,
                agent_id=agent_id,
                reason=f"agent {agent_id} revoked",
                by=actor,
                now_us=now_us,
            )
        audit.append_audit(
            conn,
            actor=actor,
            action="agent.revoke",
            target=agent_id,
            detail=_detail(via, machine_banned=machine),
            now_us=now_us,
        )
    return done


def lift_ban(conn: Connection, machine_id: str, *, actor: str, via: str, now_us: int) -> bool:
    """Let a banned machine enroll again (a new key; the revoked one stays refused)."""
    done = agent_store.lift_ban(conn, machine_id, by=actor, now_us=now_us)
    if done:
        audit.append_audit(
            conn,
            actor=actor,
            action="machine.unban",
            target=machine_id,
            detail=_detail(via),
            now_us=now_us,
        )
    return done


def add_user(
    conn: Connection, name: str, role: str, *, actor: str, via: str, now_us: int
) -> tuple[str, str]:
    """A new account ``(password, api_token)``, shown once; ``users.UserExists`` if taken."""
    password, token = users.add_user(conn, name, role, now_us)
    audit.append_audit(
        conn, actor=actor, action="user.add", target=name, detail=_detail(via, role=role),
        now_us=now_us,
    )  # fmt: skip
    return password, token


def reset_user(
    conn: Connection, name: str, *, actor: str, via: str, now_us: int
) -> tuple[str, str]:
    """New password and token, older tokens revoked; ``users.NoSuchUser`` if not active."""
    password, token = users.reset_credentials(conn, name, now_us)
    audit.append_audit(
        conn, actor=actor, action="user.reset", target=name, detail=_detail(via), now_us=now_us
    )
    return password, token


def disable_user(conn: Connection, name: str, *, actor: str, via: str, now_us: int) -> int:
    """Disable an account (tokens revoked); ``users.NoSuchUser`` if not active."""
    revoked = users.disable_user(conn, name, now_us)
    audit.append_audit(
        conn, actor=actor, action="user.disable", target=name,
        detail=_detail(via, tokens_revoked=revoked), now_us=now_us,
    )  # fmt: skip
    return revoked


def import_inventory(
    conn: Connection,
    entries: list[inventory.InventoryEntry],
    *,
    actor: str,
    via: str,
    now_us: int,
) -> int:
    """Replace the inventory with ``entries`` (already checked by ``inventory.parse_csv``)."""
    count = inventory.replace_inventory(conn, entries, now_us=now_us, by=actor)
    audit.append_audit(
        conn,
        actor=actor,
        action="inventory.import",
        target=f"{count} hosts",
        detail=_detail(via, hosts=count),
        now_us=now_us,
    )
    return count


def add_signer(
    conn: Connection, keyid: str, *, name: str, role: str, actor: str, via: str, now_us: int
) -> signers.Signer:
    """Name a signing key; ``signers.SignerExists`` if the key id is registered already."""
    signer = signers.add_signer(conn, keyid, name=name, role=role, added_by=actor, now_us=now_us)
    audit.append_audit(
        conn,
        actor=actor,
        action="signer.add",
        target=keyid,
        detail=_detail(via, name=name, role=role),
        now_us=now_us,
    )
    return signer


def retire_signer(conn: Connection, keyid: str, *, actor: str, via: str, now_us: int) -> bool:
    done = signers.retire_signer(conn, keyid, now_us)
    if done:
        audit.append_audit(
            conn, actor=actor, action="signer.retire", target=keyid, detail=_detail(via),
            now_us=now_us,
        )  # fmt: skip
    return done
