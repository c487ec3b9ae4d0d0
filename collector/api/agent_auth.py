"""Authenticating agent requests signed as in :mod:`proscribe.core.wire.auth`.

Checks, in order, each with its own 401 slug so the agent knows what to do:
``bad_signature`` (headers missing or malformed), ``unknown_agent`` / ``revoked_agent`` (the
agent re-enrolls and keeps its spool), ``stale_request`` (clock skew over 300 s),
``bad_signature`` (method, path, query or body altered), ``replayed_nonce``. The nonce is
recorded in the database by the caller, inside the transaction that does the request's work,
so a replay is refused on every replica.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection

from proscribe.collector.api.errors import ApiError
from proscribe.collector.storage import to_us
from proscribe.collector.storage.agents import consume_nonce, enrolled_keys, get_agent
from proscribe.collector.storage.database import Database
from proscribe.core.wire.auth import (
    H_AGENT,
    H_TIME,
    MAX_SKEW_SECONDS,
    AuthFailure,
    verify_request,
)

# A nonce must stay remembered as long as its timestamp could still pass the skew check.
NONCE_TTL_SECONDS = 2 * MAX_SKEW_SECONDS + 60
# Parsed keys kept per replica: every agent of a large fleet reaches every replica, and a key
# not cached costs a database look-up on the heartbeat path (~250 bytes an entry).
MAX_CACHED_KEYS = 500_000


@dataclass(frozen=True, slots=True)
class AuthenticatedAgent:
    agent_id: str
    nonce: str
    hostname: str


def _unauthorized(error: str, detail: str) -> ApiError:
    return ApiError(401, error, detail)


_REFUSALS = {
    "unknown_agent": "this agent is not enrolled; enroll again",
    "revoked_agent": "this agent was revoked; enroll again",
    "replayed_nonce": "this nonce was already used",
}


def refusal(slug: str) -> ApiError:
    """The 401 for ``unknown_agent``, ``revoked_agent`` or ``replayed_nonce``."""
    return _unauthorized(slug, _REFUSALS[slug])


def decode_public_key(text: str) -> Ed25519PublicKey:
    """Parse an ``ed25519:BASE64`` string from the network (never a path, unlike keys.py)."""
    if not text.startswith("ed25519:"):
        raise ValueError("public_key must be 'ed25519:BASE64'")
    try:
        raw = base64.b64decode(text[len("ed25519:") :], validate=True)
    except binascii.Error as err:
        raise ValueError("public_key is not valid base64") from err
    if len(raw) != 32:
        raise ValueError("public_key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class AgentAuthenticator:
    """Stateless apart from a cache of parsed public keys (keys never change per agent id)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._lock = threading.Lock()

    def authenticate(
        self,
        conn: Connection,
        headers: Mapping[str, str],
        method: str,
        path_and_query: str,
        body: bytes,
    ) -> AuthenticatedAgent:
        """Verify everything but the nonce; see :meth:`consume`."""
        agent_id = headers.get(H_AGENT)
        if not agent_id or len(agent_id) > 64:
            raise _unauthorized("bad_signature", f"missing or malformed {H_AGENT} header")
        agent = get_agent(conn, agent_id)
        if agent is None:
            raise refusal("unknown_agent")
        if agent.revoked_us is not None:
            raise refusal("revoked_agent")
        key = self._public_key(agent_id, agent.public_key)
        nonce = self.check_signature(key, headers, method, path_and_query, body)
        return AuthenticatedAgent(agent_id, nonce, agent.hostname)

    def check_signature(
        self,
        key: Ed25519PublicKey,
        headers: Mapping[str, str],
        method: str,
        path_and_query: str,
        body: bytes,
    ) -> str:
        """The request's time (``stale_request``) and signature (``bad_signature``) against
        the agent's ``key``; returns the nonce, not yet consumed."""
        stamp = headers.get(H_TIME, "")
        now = self._clock()
        if stamp.isdigit() and len(stamp) <= 12 and abs(now - int(stamp)) > MAX_SKEW_SECONDS:
            raise _unauthorized(
                "stale_request",
                f"request time is more than {MAX_SKEW_SECONDS}s from the server's clock",
            )
        try:
            nonce, _ts = verify_request(key, headers, method, path_and_query, body, now=now)
        except AuthFailure as err:
            raise _unauthorized("bad_signature", str(err)) from err
        return nonce

    def cached_key(self, agent_id: str) -> Ed25519PublicKey | None:
        """The agent's key if an earlier request looked it up (the heartbeat fast path: the
        revocation is then checked in the heartbeat's own batch, see heartbeat_batch)."""
        with self._lock:
            return self._keys.get(agent_id)

    def preload(self, db: Database, *, page: int = 10_000) -> int:
        """Parse and cache the key of every enrolled agent not revoked, a page at a time (a
        replica's first minute would otherwise look each agent up as its first heartbeat
        arrives: ~2 ms of replica CPU and a database round trip each). Keys cached meanwhile
        by requests are the same keys. Returns how many were loaded; stops at the cache's cap."""
        loaded, after = 0, ""
        while loaded < MAX_CACHED_KEYS:
            with db.read() as conn:
                rows = enrolled_keys(conn, after=after, limit=page)
            if not rows:
                break
            parsed = []
            for agent_id, text in rows:
                try:
                    parsed.append((agent_id, decode_public_key(text)))
                except ValueError:
                    continue  # never stored so (enroll checks it); a request would say why
            with self._lock:
                for agent_id, key in parsed:
                    self._keys.setdefault(agent_id, key)
            loaded += len(parsed)
            after = rows[-1][0]
        return loaded

    def forget(self, agent_id: str) -> None:
        """Drop a revoked or deleted agent's key: its next request takes the full look-up,
        which answers ``revoked_agent`` / ``unknown_agent`` before any other check."""
        with self._lock:
            self._keys.pop(agent_id, None)

    def nonce_expiry_us(self) -> int:
        return to_us(self._clock() + NONCE_TTL_SECONDS)

    def consume(self, conn: Connection, agent: AuthenticatedAgent) -> None:
        """Record the nonce in the caller's transaction; 401 ``replayed_nonce`` if seen."""
        if not consume_nonce(conn, agent.agent_id, agent.nonce, self.nonce_expiry_us()):
            raise refusal("replayed_nonce")

    def _public_key(self, agent_id: str, text: str) -> Ed25519PublicKey:
        with self._lock:
            key = self._keys.get(agent_id)
        if key is None:
            key = decode_public_key(text)
            with self._lock:
                if len(self._keys) > MAX_CACHED_KEYS:
                    self._keys.clear()
                self._keys[agent_id] = key
        return key


def path_and_query(scope_path: bytes | str, query: bytes) -> str:
    """The request target exactly as the client sent it (what the agent signed)."""
    path = scope_path.decode("latin-1") if isinstance(scope_path, bytes) else scope_path
    return path + ("?" + query.decode("latin-1") if query else "")
