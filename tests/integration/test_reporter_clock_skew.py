"""An agent whose clock is an hour off still delivers: the real collector answers its signed
requests ``stale_request`` (more than 300 s of skew), the reporter takes the collector's time
from the answer's ``Date`` header and signs with it from then on. The reporter runs in its own
process with ``time.time`` shifted, against ``proscribe collector serve``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proscribe.agent.events import new_event
from proscribe.agent.spool import Spool
from proscribe.collector.devserver import CollectorProcess
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.agents import create_enroll_secret
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow

AGENT = r"""
import sys, time
skew = float(sys.argv[3])
_real = time.time
time.time = lambda: _real() + skew  # this machine's clock is wrong
from pathlib import Path
from proscribe.agent.reporter import ReporterConfig, reporter_for_url
from proscribe.agent.spool import Spool

state = Path(sys.argv[2])
spool = Spool(state / "spool.db")
reporter = reporter_for_url(
    spool, url=sys.argv[1], ca_file=None, enroll_secret_file=state / "enroll.secret",
    state_dir=state, host_facts={"hostname": "ws-skew", "os": "linux", "agent_version": "t"},
    config=ReporterConfig(heartbeat_interval=3600, policy_interval=3600, idle_check=0.1,
                          backoff_base=0.05, backoff_cap=0.3,
                          status_file=state / "reporter.json"),
)
reporter.start()
while True:
    time.sleep(1)
"""


def _pending(path: Path) -> int:
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE state='pending'").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_an_agent_with_a_wrong_clock_still_delivers(tmp_path: Path, skew: float) -> None:
    url = f"sqlite:///{tmp_path / 'collector.db'}"
    db = open_database(url)
    upgrade(db)
    with db.write() as conn:
        secret = create_enroll_secret(conn, "skew", 0)[1]
    db.dispose()
    state = tmp_path / "agent"
    state.mkdir()
    (state / "enroll.secret").write_text(secret + "\n", encoding="utf-8")
    spool = Spool(state / "spool.db")
    assert all(
        spool.append_many(
            [new_event("dns", rule="deepseek-web", action="sinkholed") for _ in range(10)]
        )
    )
    spool.close()

    with CollectorProcess(tmp_path / "srv", url) as collector:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, collector.url, str(state), str(skew)]
        )
        try:
            deadline = time.monotonic() + 30
            while _pending(state / "spool.db") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _pending(state / "spool.db") == 0, "the skewed agent never delivered"
            engine = create_engine(url)
            with engine.connect() as conn:
                stored = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
            engine.dispose()
            assert stored == 10
            status_file = state / "reporter.json"
            deadline = time.monotonic() + 5
            offset = None
            while time.monotonic() < deadline:
                try:
                    offset = json.loads(status_file.read_text())["clock_offset_s"]
                except (OSError, ValueError, KeyError):
                    offset = None
                if offset is not None and offset != 0:
                    break
                time.sleep(0.05)
            assert offset is not None and abs(offset + skew) < 5, offset
        finally:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(10)
    assert "Traceback" not in collector.log.read_text(errors="replace")
