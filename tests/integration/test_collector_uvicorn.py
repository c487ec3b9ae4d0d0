"""The REAL collector: ``proscribe collector serve`` as a subprocess on a loopback port, driven
by simulated agents that sign every request. Run against SQLite and the real PostgreSQL at
127.0.0.1:5432 (a uniquely named database, dropped afterwards).

Exactly-once under crashes: batches stream in while the server is ``kill -9``-ed; the sender
(like the reporter) re-sends whatever was not acknowledged after the restart. Every event
must then be in the database exactly once, and everything acknowledged before the kill too.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from proscribe.collector.storage import open_database
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.core.events import new_event
from tests.support.devserver import CollectorProcess
from tests.support.postgres import throwaway_database
from tests.support.simulate import SimulatedAgent
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow

PROSCRIBE = [sys.executable, "-m", "proscribe.cli"]


class ServedCollector(CollectorProcess):
    """``proscribe collector serve``, plus the operator's CLI and SQL on the same database."""

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
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return conn.execute(text(sql)).scalar_one()
        finally:
            engine.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def collector(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedCollector]:
    tmp_path = tmp_path_factory.mktemp(f"collector-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url = f"sqlite:///{tmp_path / 'collector.db'}"
        else:
            db_url = stack.enter_context(throwaway_database())
        col = stack.enter_context(ServedCollector(tmp_path, db_url))
        yield col
    log = col.log.read_text(errors="replace")
    assert "Traceback" not in log, log


def _secret(col: ServedCollector) -> str:
    # Straight into the database: a CLI process per test would cost seconds of imports.
    db = open_database(col.database_url)
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


def test_enroll_ingest_duplicates_heartbeat_report(collector: ServedCollector) -> None:
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


def test_unknown_and_revoked_agents_are_refused(collector: ServedCollector) -> None:
    agent = SimulatedAgent(collector.url)
    agent.enroll(_secret(collector))
    assert agent.agent_id is not None
    collector.cli("agent", "revoke", agent.agent_id)
    resp = agent.post_events(_events(1))
    assert resp.status == 401
    assert resp.json()["error"] == "revoked_agent"
    agent.close()


def test_kill9_mid_stream_then_restart_loses_nothing_and_duplicates_nothing(
    collector: ServedCollector,
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


def test_port_in_use_is_one_line_exit_2(collector: ServedCollector) -> None:
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
