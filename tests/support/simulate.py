"""A simulated agent: enrolls and makes signed requests over one keep-alive connection.

Used by the integration tests, the benchmarks and the demo to drive a real collector the way
the agent's reporter does, without the rest of the agent. ``http.client`` keeps per-request
overhead low enough that a benchmark measures the server, not this client.
"""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request


def heartbeat_body(hostname: str, machine_id: str | None = None) -> dict[str, Any]:
    """A steady enforcing agent's heartbeat, as the agent's reporter sends it
    (agent/heartbeat.py): the benchmarks' fleets send this."""
    body: dict[str, Any] = {
        "agent_version": "0.1.0",
        "hostname": hostname,
        "os": "linux",
        "mode": "enforce",
        "policy": {
            "id": "us-navy-deepseek-2025",
            "serial": 7,
            "sha256": "ab" * 32,
            "expires": "2027-11-01T00:00:00Z",
            "stale": False,
        },
        "sensors": {"process": "netlink", "dns": "proxy", "file": "off"},
        "spool": {"depth": 0, "bytes": 0, "dropped": 0},
        "time": "2026-11-28T12:00:00.000Z",
    }
    if machine_id is not None:
        body["machine_id"] = machine_id
    return body


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class SimulatedAgent:
    def __init__(
        self,
        base_url: str,
        *,
        key: Ed25519PrivateKey | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.key = key or Ed25519PrivateKey.generate()
        self.agent_id: str | None = None
        self._conn: http.client.HTTPConnection | None = None

    @property
    def public_key(self) -> str:
        return public_key_string(self.key.public_key())

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.ssl_context
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        reused = self._conn is not None
        try:
            return self._once(method, path, body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            # The server closed an idle keep-alive connection; every agent request is
            # idempotent (event ids, nonces are fresh per signature), so one retry is safe.
            return self._once(method, path, body, headers)

    def _once(self, method: str, path: str, body: bytes, headers: dict[str, str] | None) -> Reply:
        conn = self._connection()
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()  # a broken keep-alive connection is not reused
            raise
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def enroll(self, secret: str, hostname: str = "sim-host", os_name: str = "linux") -> Reply:
        body = json.dumps(
            {
                "secret": secret,
                "hostname": hostname,
                "os": os_name,
                "agent_version": "0.1.0-sim",
                "public_key": self.public_key,
            }
        ).encode()
        reply = self.request("POST", "/api/v1/enroll", body, {"Content-Type": "application/json"})
        if reply.status == 200:
            self.agent_id = reply.json()["agent_id"]
        return reply

    def signed(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        compress: bool = False,
        extra_headers: dict[str, str] | None = None,
        now: float | None = None,
        nonce: str | None = None,
    ) -> Reply:
        if self.agent_id is None:
            raise RuntimeError("enroll first")
        if compress:
            body = gzip.compress(body)
        headers = sign_request(self.key, self.agent_id, method, path, body, now=now, nonce=nonce)
        headers["Content-Type"] = "application/json"
        if compress:
            headers["Content-Encoding"] = "gzip"
        headers.update(extra_headers or {})
        return self.request(method, path, body, headers)

    def post_events(self, events: list[dict[str, Any]], *, compress: bool = False) -> Reply:
        body = json.dumps({"events": events}).encode()
        return self.signed("POST", "/api/v1/events", body, compress=compress)

    def heartbeat(self, payload: dict[str, Any]) -> Reply:
        return self.signed("POST", "/api/v1/heartbeat", json.dumps(payload).encode())
