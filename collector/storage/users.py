"""People: accounts with a role, passwords as scrypt, API tokens as SHA-256.

Tokens are 256-bit random strings, so SHA-256 is enough to make a database dump useless;
passwords are chosen by people (or generated, then possibly changed) and get scrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from proscribe.collector.storage.tables import api_tokens, users

ROLES = ("viewer", "admin")
# What a user name may be (CLI, dashboard): plain enough for logs, URLs and the audit log.
USER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
USER_NAME_RE = re.compile(USER_NAME)
TOKEN_PREFIX = "pst_"  # noqa: S105 - a visible prefix, not a secret
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class UserExists(Exception):
    """A user of that name already exists."""


class NoSuchUser(Exception):
    """No active user of that name (unknown, or disabled)."""


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    role: str
    created_us: int
    disabled_us: int | None
    active_tokens: int


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the people's API, and with which role."""

    user_id: int
    name: str
    role: str

    def has_role(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
        )
    except (ValueError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def add_user(conn: Connection, name: str, role: str, now_us: int) -> tuple[str, str]:
    """Create a user; returns ``(password, api_token)`` — shown once, stored only hashed."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    password = secrets.token_urlsafe(18)
    try:
        result = conn.execute(
            insert(users)
            .values(
                name=name,
                password_hash=hash_password(password),
                role=role,
                created_us=now_us,
                disabled_us=None,
            )
            .returning(users.c.user_id)
        )
        user_id = int(result.scalar_one())
    except IntegrityError as err:
        raise UserExists(name) from err
    token = issue_token(conn, user_id, now_us)
    return password, token


def issue_token(conn: Connection, user_id: int, now_us: int) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        insert(api_tokens).values(
            token_sha256=token_digest(token), user_id=user_id, created_us=now_us, revoked_us=None
        )
    )
    return token


def principal_for_token(conn: Connection, token: str) -> Principal | None:
    row = conn.execute(
        select(users.c.user_id, users.c.name, users.c.role)
        .select_from(api_tokens.join(users, api_tokens.c.user_id == users.c.user_id))
        .where(
            api_tokens.c.token_sha256 == token_digest(token),
            api_tokens.c.revoked_us.is_(None),
            users.c.disabled_us.is_(None),
        )
    ).first()
    if row is None:
        return None
    return Principal(int(row.user_id), row.name, row.role)


def principal_for_password(conn: Connection, name: str, password: str) -> Principal | None:
    """For the dashboard's login form."""
    row = conn.execute(
        select(users).where(users.c.name == name, users.c.disabled_us.is_(None))
    ).first()
    if row is None or not check_password(password, row.password_hash):
        return None
    return Principal(int(row.user_id), row.name, row.role)


def list_users(conn: Connection) -> list[UserRow]:
    """Every account, oldest first, with its count of unrevoked API tokens."""
    live = (
        select(api_tokens.c.user_id, func.count().label("n"))
        .where(api_tokens.c.revoked_us.is_(None))
        .group_by(api_tokens.c.user_id)
        .subquery()
    )
    rows = conn.execute(
        select(users, func.coalesce(live.c.n, 0).label("active_tokens"))
        .select_from(users.outerjoin(live, live.c.user_id == users.c.user_id))
        .order_by(users.c.user_id)
    )
    return [
        UserRow(
            r.name,
            r.role,
            int(r.created_us),
            None if r.disabled_us is None else int(r.disabled_us),
            int(r.active_tokens),
        )
        for r in rows
    ]


def _active_user_id(conn: Connection, name: str) -> int:
    row = conn.execute(
        select(users.c.user_id).where(users.c.name == name, users.c.disabled_us.is_(None))
    ).first()
    if row is None:
        raise NoSuchUser(name)
    return int(row.user_id)


def _revoke_tokens(conn: Connection, user_id: int, now_us: int) -> int:
    result = conn.execute(
        update(api_tokens)
        .where(api_tokens.c.user_id == user_id, api_tokens.c.revoked_us.is_(None))
        .values(revoked_us=now_us)
    )
    return int(result.rowcount or 0)


def disable_user(conn: Connection, name: str, now_us: int) -> int:
    """Disable an account: its password and every token stop working at once, and so do its
    dashboard sessions (they are checked against the account on each request). Returns the
    number of tokens revoked. The row stays, so the audit trail keeps its name."""
    user_id = _active_user_id(conn, name)
    conn.execute(update(users).where(users.c.user_id == user_id).values(disabled_us=now_us))
    return _revoke_tokens(conn, user_id, now_us)


def reset_credentials(conn: Connection, name: str, now_us: int) -> tuple[str, str]:
    """A new password and a new API token for an active account (shown once); every older
    token is revoked. For a lost password or a leaked token."""
    user_id = _active_user_id(conn, name)
    password = secrets.token_urlsafe(18)
    conn.execute(
        update(users)
        .where(users.c.user_id == user_id)
        .values(password_hash=hash_password(password))
    )
    _revoke_tokens(conn, user_id, now_us)
    return password, issue_token(conn, user_id, now_us)
