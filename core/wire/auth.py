"""Signed agent requests.

Every request an enrolled agent makes is signed with its Ed25519 key. The collector stores the
agent's public key only, so a dump of its database yields no usable credential. Headers::

    X-Proscribe-Agent:     <agent_id>
    X-Proscribe-Time:      <unix seconds, integer>
    X-Proscribe-Nonce:     <32 hex chars, random per request>
    X-Proscribe-Signature: <base64 Ed25519 signature>

The signed message binds method, path with query, body digest, time and nonce::

    b"proscribe-request-v1\\n" + METHOD + b"\\n" + PATH_AND_QUERY + b"\\n"
    + hex(sha256(raw body as sent, i.e. after gzip)) + b"\\n" + TIME + b"\\n" + NONCE + b"\\n"
    + AGENT_ID

The collector rejects a time more than :data:`MAX_SKEW_SECONDS` away from its clock and a nonce
it has already seen within twice that window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_SKEW_SECONDS = 300
H_AGENT = "X-Proscribe-Agent"
H_TIME = "X-Proscribe-Time"
H_NONCE = "X-Proscribe-Nonce"
H_SIGNATURE = "X-Proscribe-Signature"


def signing_message(
    method: str, path_and_query: str, body: bytes, timestamp: str, nonce: str, agent_id: str
) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    parts = ["proscribe-request-v1", method.upper(), path_and_query, digest, timestamp, nonce]
    return ("\n".join(parts) + "\n" + agent_id).encode("utf-8")


def sign_request(
    key: Ed25519PrivateKey,
    agent_id: str,
    method: str,
    path_and_query: str,
    body: bytes,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers to add to a request so the collector can authenticate it."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    msg = signing_message(method, path_and_query, body, timestamp, nonce, agent_id)
    return {
        H_AGENT: agent_id,
        H_TIME: timestamp,
        H_NONCE: nonce,
        H_SIGNATURE: base64.b64encode(key.sign(msg)).decode("ascii"),
    }


class AuthFailure(Exception):
    """The request's signature headers are missing, malformed, stale or do not verify."""


def verify_request(
    public_key: Ed25519PublicKey,
    headers: Mapping[str, str],
    method: str,
    path_and_query: str,
    body: bytes,
    now: float | None = None,
) -> tuple[str, int]:
    """Check a signed request; returns ``(nonce, timestamp)`` for the caller's replay check."""
    try:
        agent_id = headers[H_AGENT]
        timestamp = headers[H_TIME]
        nonce = headers[H_NONCE]
        signature = base64.b64decode(headers[H_SIGNATURE], validate=True)
    except (KeyError, binascii.Error) as err:
        raise AuthFailure(f"missing or malformed signature header: {err}") from err
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise AuthFailure(f"{H_TIME} must be unix seconds")
    if len(nonce) != 32 or any(c not in "0123456789abcdef" for c in nonce):
        raise AuthFailure(f"{H_NONCE} must be 32 lower-case hex characters")
    ts = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - ts) > MAX_SKEW_SECONDS:
        raise AuthFailure(f"request time is more than {MAX_SKEW_SECONDS}s from the server's clock")
    msg = signing_message(method, path_and_query, body, timestamp, nonce, agent_id)
    try:
        public_key.verify(signature, msg)
    except InvalidSignature as err:
        raise AuthFailure("request signature does not verify") from err
    return nonce, ts
