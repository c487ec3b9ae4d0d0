"""`kill -9` of the agent in the middle of an upload: nothing lost, nothing stored twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from collector_double import CollectorDouble
from proscribe.agent.events import new_event
from proscribe.agent.spool import Spool

AGENT = r"""
import sys, time
from pathlib import Path
from proscribe.agent.reporter import ReporterConfig, reporter_for_url
from proscribe.agent.spool import Spool

state = Path(sys.argv[2])
spool = Spool(state / "spool.db")
reporter = reporter_for_url(
    spool, url=sys.argv[1], ca_file=None, enroll_secret_file=state / "enroll.secret",
    state_dir=state, host_facts={"hostname": "ws", "os": "linux", "agent_version": "t"},
    config=ReporterConfig(heartbeat_interval=3600, policy_interval=3600, idle_check=0.2,
                          backoff_base=0.05, backoff_cap=0.2),
)
reporter.start()
while True:
    time.sleep(1)
"""


def _pending(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE state='pending'").fetchone()[0])
    finally:
        conn.close()


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_kill_9_mid_upload_then_restart_delivers_each_event_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "enroll.secret").write_text("s3cret")
    spool = Spool(state / "spool.db")
    ids = []
    for i in range(20):
        event = new_event("process", rule="r", action="killed", process={"pid": i, "exe": "/x"})
        assert spool.append(event)
        ids.append(event["id"])
    spool.close()

    collector = CollectorDouble().start()
    collector.hold_events = True
    cmd = [sys.executable, "-c", AGENT, collector.url, str(state)]
    first = subprocess.Popen(cmd)
    second: subprocess.Popen[bytes] | None = None
    try:
        # the batch is stored by the collector, whose answer is held back: kill the agent now
        assert collector.events_received.wait(20), "the agent never uploaded"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        collector.hold_events = False
        collector.release_events.set()
        assert set(collector.events) == set(ids)
        assert _pending(state / "spool.db") == 20  # never acknowledged: still pending

        second = subprocess.Popen(cmd)
        assert _wait(lambda: _pending(state / "spool.db") == 0, 20), "resend never acknowledged"
        assert set(collector.events) == set(ids)  # stored once each
        assert collector.duplicates == 20  # the resend was answered "duplicate"
        assert len(collector.agents) == 1  # the restarted agent kept its identity
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        collector.release_events.set()
        collector.stop()
