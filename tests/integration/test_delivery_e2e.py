"""Exactly-once delivery end to end with real processes on both sides: the agent's reporter
(``proscribe.agent.reporter``, in its own process, reading a real spool) against the real
collector (``proscribe collector serve`` under uvicorn), on SQLite and on the real PostgreSQL.

One run walks through every failure the delivery path must survive, in order:

1. the collector is down when the agent starts: the reporter backs off and keeps its spool;
2. the collector comes up: events flow;
3. the collector is ``kill -9``-ed mid-stream, stays down a while, and comes back;
4. the agent is ``kill -9``-ed mid-upload and restarted (same spool, same identity);

and at the end every spooled event is in the database exactly once, the spool holds nothing
pending, and the collector knows one agent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from proscribe.agent.spool import Spool
from proscribe.core.events import new_event
from tests.support.devserver import CollectorProcess
from tests.support.ports import free_tcp_port
from tests.support.postgres import throwaway_database
from tests.support.reporter_process import agent_state, pending, start_reporter
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow

EVENTS = 20_000  # forty full batches of 500: the kills land between and inside batches (with
# 4,000 a fast machine stored all eight batches before the first kill landed)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'collector.db'}"
    else:
        with throwaway_database() as url:
            yield url


def _scalar(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    except Exception:  # the table does not exist yet, or the database is restarting
        return -1
    finally:
        engine.dispose()


def _event_ids(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {str(r[0]) for r in conn.execute(text("SELECT event_id FROM events"))}
    finally:
        engine.dispose()


def test_collector_down_killed_and_agent_killed_every_event_arrives_once(
    tmp_path: Path, database_url: str
) -> None:
    state = agent_state(tmp_path, database_url)
    spool = Spool(state / "spool.db")
    events = [
        new_event(
            "process",
            rule="deepseek-desktop",
            action="killed",
            process={"pid": 10_000 + i, "name": "deepseek", "exe": "/opt/deepseek/deepseek"},
        )
        for i in range(EVENTS)
    ]
    ids = {e["id"] for e in events}
    assert all(spool.append_many(events))  # one commit, as a burst goes in
    spool.close()
    assert pending(state / "spool.db") == EVENTS

    port = free_tcp_port()
    collector = CollectorProcess(tmp_path / "srv", database_url, port=port)
    spool_path = state / "spool.db"
    count = "SELECT count(*) FROM events WHERE rule = 'deepseek-desktop'"
    agents: list[subprocess.Popen[bytes]] = []

    def start_agent() -> subprocess.Popen[bytes]:
        proc = start_reporter(collector.url, state)
        agents.append(proc)
        return proc

    try:
        # 1. the collector is down: the reporter retries with backoff, nothing leaves the spool
        agent = start_agent()
        time.sleep(1.0)  # deliberately: a second of failed attempts, which must not hurt
        assert agent.poll() is None, "the reporter must survive a collector that is down"
        assert pending(spool_path) == EVENTS

        # 2. the collector comes up; 3. it is killed -9 once events are flowing
        collector.start()
        assert wait_for(lambda: _scalar(database_url, count) > 0, 60), "no batch stored"
        collector.kill9()
        stored_at_kill = _scalar(database_url, count)
        assert 0 < stored_at_kill < EVENTS, f"the kill should land mid-stream ({stored_at_kill})"
        time.sleep(1.0)  # down a while; the reporter keeps retrying
        assert agent.poll() is None

        # back up: 4. kill -9 the agent while it is uploading, then restart it
        collector.start()
        before = _scalar(database_url, count)
        assert wait_for(lambda: _scalar(database_url, count) > before, 60), (
            "no upload after restart"
        )
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
        assert pending(spool_path) > 0 or _scalar(database_url, count) == EVENTS
        start_agent()

        assert wait_for(lambda: pending(spool_path) == 0, 120), "the spool never drained"
        assert _scalar(database_url, count) == EVENTS
        assert (
            _scalar(
                database_url,
                "SELECT count(DISTINCT event_id) FROM events WHERE rule = 'deepseek-desktop'",
            )
            == EVENTS
        )
        assert _scalar(database_url, "SELECT count(*) FROM agents") == 1  # identity kept
        assert _event_ids(database_url) == ids
    finally:
        for proc in agents:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        collector.stop()
    log = collector.log.read_text(errors="replace")
    assert "Traceback" not in log, log
