"""People: accounts with a role, passwords as scrypt, API tokens as SHA-256.

Tokens are 256-bit random strings, so SHA-256 is enough to make a database dump useless;
passwords are chosen by people (or generated, then possibly changed) and get scrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from proscribe.collector.storage.tables import api_tokens, users
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

ROLES = ("viewer", "admin")
TOKEN_PREFIX = "pst_"  # noqa: S105 - a visible prefix, not a secret
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class UserExists(Exception):
    """A user of that name already exists."""


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
