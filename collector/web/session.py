"""The dashboard's login session: an HMAC-signed cookie, and CSRF tokens bound to it.

The cookie holds ``user_id.session_id.expires`` plus an HMAC-SHA256 over them; nothing secret
is in it and nothing is kept server-side, so any request can be checked without a session
table. The user's row is still read on every request (see ``pages``), so a disabled user or a
changed role takes effect at once. The CSRF token of a form is ``HMAC(key, "csrf:" + session)``:
a forged cross-site POST cannot know it, and ``SameSite=Strict`` already keeps the cookie off
cross-site requests (belt and braces). The login form, which has no session yet, binds its
token to a random pre-login cookie instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "proscribe_session"
LOGIN_COOKIE = "proscribe_login"
SESSION_LIFETIME_S = 8 * 3600
KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    session_id: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


class SessionSigner:
    """Signs and checks session cookies and CSRF tokens with one key.

    The key is random per process unless one is given: sessions then end when the collector
    restarts, and replicas behind a load balancer need the same key (``docs/dashboard.md``).
    """

    def __init__(self, key: bytes | None = None, lifetime_s: int = SESSION_LIFETIME_S) -> None:
        self._key = key or secrets.token_bytes(KEY_BYTES)
        self.lifetime_s = lifetime_s

    def _mac(self, purpose: str, text: str) -> str:
        digest = hmac.new(self._key, f"{purpose}:{text}".encode(), hashlib.sha256).digest()
        return _b64(digest)

    def issue(self, user_id: int, now: float) -> str:
        body = f"{user_id}.{secrets.token_urlsafe(16)}.{int(now) + self.lifetime_s}"
        return f"{body}.{self._mac('session', body)}"

    def check(self, cookie: str | None, now: float) -> Session | None:
        if not cookie or len(cookie) > 200:
            return None
        body, _, mac = cookie.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        try:
            user_text, session_id, expires_text = body.split(".")
            user_id, expires = int(user_text), int(expires_text)
        except ValueError:
            return None
        if expires <= now:
            return None
        return Session(user_id, session_id, expires)

    def csrf_token(self, session_id: str) -> str:
        return self._mac("csrf", session_id)

    def check_csrf(self, session_id: str | None, token: str | None) -> bool:
        if not session_id or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(session_id))

    @staticmethod
    def new_login_nonce() -> str:
        return secrets.token_urlsafe(16)
