"""The REAL collector: ``proscribe collector serve`` as a subprocess on a loopback port, driven
by simulated agents that sign every request. Run against SQLite and the real PostgreSQL at
127.0.0.1:5432 (a uniquely named database per session, dropped afterwards).

Exactly-once under crashes: batches stream in while the server is ``kill -9``-ed; the sender
(like the reporter) re-sends whatever was not acknowledged after the restart. Every event
must then be in the database exactly once, and everything acknowledged before the kill too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from proscribe.collector.storage import open_database
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.core.events import new_event
from tests.support.ports import free_tcp_port
from tests.support.simulate import SimulatedAgent
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow

PROSCRIBE = [sys.executable, "-m", "proscribe.cli"]
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class Collector:
    config: Path
    port: int
    db_url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*PROSCRIBE, "collector", "serve", "--config", str(self.config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"collector did not start: {self.log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [*PROSCRIBE, "collector", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout

    def scalar(self, sql: str) -> Any:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql)).scalar_one()
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    import psycopg

    name = f"proscribe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True
    ) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True
        ) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def collector(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Collector]:
    tmp_path = tmp_path_factory.mktemp(f"collector-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'collector.db'}"
    else:
        db_url = request.getfixturevalue("pg_database")
        engine = create_engine(db_url)
        with engine.begin() as conn:  # each test starts from an empty schema
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    port = free_tcp_port()
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n[database]\nurl = "{db_url}"\n', encoding="utf-8"
    )
    col = Collector(config, port, db_url, tmp_path / "collector.log")
    col.start()
    try:
        yield col
    finally:
        col.stop()
    log = col.log.read_text(errors="replace")
    assert "Traceback" not in log, log


def _secret(col: Collector) -> str:
    # Straight into the database: a CLI process per test would cost seconds of imports.
    db = open_database(col.db_url)
    try:
        with db.write() as conn:
            return create_enroll_secret(conn, "test", 0)[1]
    finally:
        db.dispose()


def _events(n: int, rule: str = "deepseek-web") -> list[dict[str, Any]]:
    return [
        new_event("dns", rule=rule, action="sinkholed", dns={"qname": "chat.deepseek.com"})
        for _ in range(n)
    ]


def test_enroll_ingest_duplicates_heartbeat_report(collector: Collector) -> None:
    agent = SimulatedAgent(collector.url)
    assert agent.enroll(_secret(collector), hostname="ws-01").status == 200
    evs = _events(50)
    first = agent.post_events(evs)
    assert first.status == 200
    assert {r["status"] for r in first.json()["results"]} == {"stored"}
    again = agent.post_events(evs, compress=True)
    assert {r["status"] for r in again.json()["results"]} == {"duplicate"}
    hb = agent.heartbeat(
        {
            "agent_version": "1",
            "hostname": "ws-01",
            "os": "linux",
            "policy": {"serial": 2},
            "spool": {"depth": 0, "dropped": 0},
        }
    )
    assert hb.status == 200
    agent_filter = f"WHERE agent_id = '{agent.agent_id}'"
    assert collector.scalar(f"SELECT count(*) FROM events {agent_filter}") == 50
    assert collector.scalar(f"SELECT count(*) FROM hosts {agent_filter}") == 1
    report = json.loads(collector.cli("report", "--since", "1d", "--format", "json"))
    mine = [v for v in report["violations"] if v["host"]["agent_id"] == agent.agent_id]
    assert len(mine) == 50
    metrics = agent.request("GET", "/metrics").body.decode()
    assert 'proscribe_events_total{outcome="duplicate"}' in metrics
    assert 'route="/api/v1/events"' in metrics
    agent.close()


def test_unknown_and_revoked_agents_are_refused(collector: Collector) -> None:
    agent = SimulatedAgent(collector.url)
    agent.enroll(_secret(collector))
    assert agent.agent_id is not None
    collector.cli("agent", "revoke", agent.agent_id)
    resp = agent.post_events(_events(1))
    assert resp.status == 401
    assert resp.json()["error"] == "revoked_agent"
    agent.close()


def test_kill9_mid_stream_then_restart_loses_nothing_and_duplicates_nothing(
    collector: Collector,
) -> None:
    secret = _secret(collector)
    batches = [_events(100, rule="kill9") for _ in range(60)]
    acked: set[str] = set()
    pending = list(range(len(batches)))
    lock = threading.Lock()
    killed = threading.Event()

    def sender(index_slice: list[int]) -> None:
        agent = SimulatedAgent(collector.url, timeout=10)
        wait_for(lambda: agent.enroll(secret).status == 200, 30, step=0.05)
        for i in index_slice:
            try:
                reply = agent.post_events(batches[i])
            except OSError:
                continue  # the collector died: this batch stays unacknowledged
            if reply.status == 200 and all(
                r["status"] in ("stored", "duplicate") for r in reply.json()["results"]
            ):
                with lock:
                    acked.update(e["id"] for e in batches[i])
                    pending.remove(i)
            if killed.is_set():
                time.sleep(0.01)
        agent.close()

    threads = [threading.Thread(target=sender, args=(list(range(k, 60, 3)),)) for k in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 1500, 30, step=0.005)  # then kill, mid-stream
    collector.kill9()
    killed.set()
    for t in threads:
        t.join(timeout=60)
    acked_before = set(acked)
    assert 0 < len(acked_before) < 6000, "the kill should land mid-stream"

    collector.start()
    retry = SimulatedAgent(collector.url)
    assert retry.enroll(secret).status == 200
    for i in list(pending):  # the reporter re-sends everything not acknowledged
        reply = retry.post_events(batches[i])
        assert reply.status == 200
        acked.update(e["id"] for e in batches[i])
    # A lost acknowledgement: re-sending an acknowledged batch must not store it twice.
    assert {r["status"] for r in retry.post_events(batches[0]).json()["results"]} == {"duplicate"}
    retry.close()

    all_ids = {e["id"] for b in batches for e in b}
    assert acked == all_ids
    before = collector.scalar("SELECT count(*) FROM events WHERE rule = 'kill9'")
    assert before == 6000
    assert (
        collector.scalar("SELECT count(DISTINCT event_id) FROM events WHERE rule = 'kill9'") == 6000
    )
    ids_sql = ",".join(f"'{i}'" for i in list(acked_before)[:500])
    assert collector.scalar(f"SELECT count(*) FROM events WHERE event_id IN ({ids_sql})") == min(
        500, len(acked_before)
    )


def test_port_in_use_is_one_line_exit_2(collector: Collector) -> None:
    out = subprocess.run(
        [*PROSCRIBE, "collector", "serve", "--config", str(collector.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "port already in use" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
