"""The collector in-process with ``[[forward]]`` tables, one enrolled agent, and helpers to post
events through the real agent API and read the forwarders' state from the database."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.forward.status import ForwardStatus, forward_status
from proscribe.collector.storage import to_us
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.core.events import Event, new_event
from tests.support.clock import ManualClock
from tests.support.collector_app import AgentKey, InProcessCollector


@dataclass
class ForwardEnv(InProcessCollector):
    agent: AgentKey

    def post(self, evs: list[Event]) -> None:
        body = json.dumps({"events": evs}).encode()
        reply = self.signed(*self.agent, "POST", "/api/v1/events", body)
        assert reply.status_code == 200, reply.text
        assert all(r["status"] == "stored" for r in reply.json()["results"]), reply.text

    def status(self) -> dict[str, ForwardStatus]:
        with self.db.read() as conn:
            found = forward_status(conn, self.state.settings.forwards, to_us(self.clock.now))
        return {s.name: s for s in found}


def events(n: int, *, start: int = 0, **over: Any) -> list[Event]:
    """``n`` process events, pids ``start``…, killed by rule deepseek-desktop."""
    return [
        new_event(
            "process",
            rule="deepseek-desktop",
            action="killed",
            process={
                "pid": 1000 + start + i,
                "name": "deepseek",
                "user": "alice",
                "cmdline": ["deepseek", f"--n={start + i}"],
            },
            **over,
        )
        for i in range(n)
    ]


def event_rows(n: int, *, agent_id: str = "a" * 32) -> list[dict[str, Any]]:
    """``n`` stored-event rows (columns of the events table), for filling a database directly
    when the test is about what happens after storage."""
    rows = []
    for i in range(n):
        event = new_event(
            "process",
            rule="deepseek-desktop",
            action="killed",
            policy={"id": "us-navy-deepseek-2025", "serial": 2, "sha256": "ab" * 32},
            host={"agent_id": agent_id, "hostname": f"ws-{i % 500}", "os": "linux"},
            process={
                "pid": 1000 + i,
                "ppid": 1,
                "name": "deepseek",
                "exe": "/opt/deepseek/deepseek",
                "cmdline": ["deepseek", "--chat", f"--session={i}"],
                "user": "alice",
                "uid": 1000,
                "euid": 1000,
            },
        )
        rows.append(
            {
                "event_id": event["id"],
                "agent_id": agent_id,
                "time_us": i,
                "received_us": i,
                "hostname": event["host"]["hostname"],
                "username": "alice",
                "rule": event["rule"],
                "kind": "process",
                "action": "killed",
                "severity": "high",
                "body": json.dumps(event, separators=(",", ":")),
            }
        )
    return rows


@contextlib.contextmanager
def forwarding_collector(
    folder: Path,
    forwards: list[dict[str, Any]],
    *,
    clock: ManualClock | None = None,
    database_url: str | None = None,
    agent: AgentKey | None = None,
) -> Iterator[ForwardEnv]:
    """A collector whose forwarders run while the ``with`` block does (the app's lifespan);
    ``agent`` reuses an agent enrolled by an earlier run on the same database."""
    clock = clock or ManualClock()
    url = database_url or f"sqlite:///{folder / 'collector.db'}"
    settings = settings_from_mapping(
        {"database": {"url": url}, "forward": forwards}, source="collector.toml", base=folder
    )
    app = create_app(settings, clock=clock)
    with TestClient(app) as client:
        env = ForwardEnv(app, client, clock, agent or ("", None))  # type: ignore[arg-type]
        if agent is None:
            with env.db.write() as conn:
                _sid, secret = create_enroll_secret(conn, "forward tests", 0)
            env.agent = env.enroll_agent(secret, "ws-fw")
        yield env
