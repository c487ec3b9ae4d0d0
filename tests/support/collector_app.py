"""The collector's real FastAPI app in-process (``TestClient``, real database), on a clock the test
moves. What the agent-API, people-API and dashboard tests share; each suite's environment
(``AgentApiEnv``, ``PeopleApiEnv``, ``DashboardEnv``) adds the principals it needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request
from tests.support.clock import ManualClock

AgentKey = tuple[str, Ed25519PrivateKey]  # an enrolled agent: its id and its signing key


@dataclass
class InProcessCollector:
    app: Any
    client: TestClient
    clock: ManualClock  # the app's clock (``create_app(clock=...)``); signatures use it too

    @property
    def state(self) -> Any:
        return self.app.state.collector

    @property
    def db(self) -> Any:
        return self.state.db

    def enroll_agent(
        self,
        secret: str,
        hostname: str,
        key: Ed25519PrivateKey | None = None,
        **over: Any,
    ) -> AgentKey:
        """Enroll through the real API (``over`` replaces fields of the request body)."""
        key = key or Ed25519PrivateKey.generate()
        body = {
            "secret": secret,
            "hostname": hostname,
            "os": "linux",
            "agent_version": "0.1.0",
            "public_key": public_key_string(key.public_key()),
            **over,
        }
        reply = self.client.post("/api/v1/enroll", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()["agent_id"], key

    def signed(
        self,
        agent_id: str,
        key: Ed25519PrivateKey,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        sign_path: str | None = None,
        sign_body: bytes | None = None,
        now: float | None = None,
        nonce: str | None = None,
    ) -> Any:
        """A request signed as the agent would sign it (at the app's time unless ``now``);
        ``sign_path``/``sign_body`` sign something other than what is sent. It says JSON, as the
        agent does (the collector refuses other content types with 415)."""
        sig = sign_request(
            key,
            agent_id,
            method,
            sign_path or path,
            body if sign_body is None else sign_body,
            now=self.clock.now if now is None else now,
            nonce=nonce,
        )
        sent = {"Content-Type": "application/json", **sig, **(headers or {})}
        return self.client.request(method, path, content=body, headers=sent)
