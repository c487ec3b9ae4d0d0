"""The dashboard in-process (FastAPI TestClient over the real app, real SQLite in a temp dir):
sign-in helpers and a signed agent that posts events through the real ingest API."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage.agents import create_enroll_secret
from tests.support.clock import ManualClock
from tests.support.collector_app import AgentKey, InProcessCollector
from tests.support.postgres import throwaway_database
from tests.support.sample import create_user, prepare_database

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
JSON = {"Content-Type": "application/json"}


@dataclass
class DashboardEnv(InProcessCollector):
    """The collector in-process with two people who sign in with passwords (vera, a viewer;
    adam, an admin) and an enroll secret for agents."""

    db_url: str
    passwords: dict[str, str]
    secret: str

    def try_login(self, name: str, password: str, client: TestClient | None = None) -> Any:
        """Submit the login form (with its CSRF token); the reply, whatever it is."""
        client = client or self.client
        csrf = CSRF.search(client.get("/login").text)
        assert csrf is not None
        return client.post(
            "/login",
            data={"username": name, "password": password, "csrf": csrf.group(1)},
            follow_redirects=False,
        )

    def login(self, name: str, client: TestClient | None = None) -> TestClient:
        client = client or self.client
        reply = self.try_login(name, self.passwords[name], client)
        assert reply.status_code == 303, reply.text
        return client

    def csrf(self, path: str = "/") -> str:
        match = CSRF.search(self.client.get(path).text)
        assert match is not None
        return match.group(1)

    def enroll(self, hostname: str = "ws-1") -> AgentKey:
        return self.enroll_agent(self.secret, hostname)

    def post_events(self, agent: AgentKey, items: list[dict[str, Any]]) -> Any:
        body = json.dumps({"events": items}).encode()
        reply = self.signed(*agent, "POST", "/api/v1/events", body, headers=JSON)
        assert reply.status_code == 200, reply.text
        assert all(r["status"] == "stored" for r in reply.json()["results"]), reply.text
        return reply

    def heartbeat(self, agent: AgentKey, serial: int | None = 2, **changes: Any) -> None:
        """A signed heartbeat; without ``hostname=`` the host keeps its recorded name."""
        payload: dict[str, Any] = {
            "agent_version": "0.1.0",
            "os": "linux",
            "mode": "enforce",
            "policy": {"id": "us-navy-deepseek-2025", "serial": serial, "sha256": "ab" * 32},
            "sensors": {"process": "netlink"},
            "spool": {"depth": 0, "bytes": 0, "dropped": 0},
        }
        payload.update(changes)
        body = json.dumps(payload).encode()
        reply = self.signed(*agent, "POST", "/api/v1/heartbeat", body, headers=JSON)
        assert reply.status_code == 200, reply.text


def event(
    *,
    rule: str = "deepseek-desktop",
    kind: str = "process",
    action: str = "killed",
    when: float | None = None,
    **sections: Any,
) -> dict[str, Any]:
    moment = datetime.fromtimestamp(when or time.time(), UTC)
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
        "kind": kind,
        "rule": rule,
        "action": action,
        "severity": "high",
        "policy": {"id": "us-navy-deepseek-2025", "serial": 2},
    }
    if not sections and kind == "process":
        sections = {"process": {"pid": 7, "name": "DeepSeek", "user": "alice"}}
    body.update(sections)
    return body


@dataclass(frozen=True)
class _Template:
    source: str  # the SQLite file, or the PostgreSQL database's name
    passwords: dict[str, str]
    secret: str


class EnvTemplates:
    """What every environment starts from, prepared once per test session and copied for each
    test (migrating and hashing two passwords per test was most of its setup): a migrated
    database with a viewer (vera), an admin (adam) and an enroll secret, on SQLite (a file,
    copied) and on PostgreSQL (a database, copied with ``CREATE DATABASE … TEMPLATE``), each
    made the first time a test asks for it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._made: dict[str, _Template] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> EnvTemplates:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def get(self, backend: str) -> _Template:
        if backend not in self._made:
            if backend == "sqlite":
                url = f"sqlite:///{self.folder / 'collector.db'}"
            else:
                url = self._stack.enter_context(throwaway_database("proscribe_envtpl"))
            passwords, secret = _fill(url)
            self._made[backend] = _Template(url.rsplit("/", 1)[1], passwords, secret)
        return self._made[backend]

    @contextlib.contextmanager
    def copy(self, backend: str, tmp_path: Path) -> Iterator[tuple[str, _Template]]:
        """A fresh copy of ``backend``'s template (SQLite in ``tmp_path``); yields its URL."""
        template = self.get(backend)
        if backend == "sqlite":
            # with its mode (0600, as the collector made it: no "was mode 644" at start)
            shutil.copy(self.folder / template.source, tmp_path / "collector.db")
            yield f"sqlite:///{tmp_path / 'collector.db'}", template
        else:
            with throwaway_database(template=template.source) as url:
                yield url, template


def _fill(url: str) -> tuple[dict[str, str], str]:
    db = prepare_database(url)
    passwords = {
        "vera": create_user(db, "vera", "viewer"),
        "adam": create_user(db, "adam", "admin"),
    }
    with db.write() as conn:
        _id, secret = create_enroll_secret(conn, "tests", int(time.time() * 1e6))
    if url.startswith("sqlite"):
        with db.write() as conn:  # everything in the main file, which is what gets copied
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return passwords, secret


def make_env(
    tmp_path: Path,
    templates: EnvTemplates,
    backend: str = "sqlite",
    config: dict[str, Any] | None = None,
) -> Iterator[DashboardEnv]:
    """The body of each test module's ``env`` fixture: a copy of ``templates``' database on
    ``backend`` ("sqlite" in ``tmp_path``, or "postgres": a throwaway database) with a viewer
    (vera), an admin (adam) and an enroll secret, and the real app around it (``config``: more
    collector.toml sections)."""
    with templates.copy(backend, tmp_path) as (url, template):
        clock = ManualClock()
        settings = settings_from_mapping(
            {"database": {"url": url}, **(config or {})}, base=tmp_path
        )
        app = create_app(settings, clock=clock)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield DashboardEnv(app, client, clock, url, dict(template.passwords), template.secret)
