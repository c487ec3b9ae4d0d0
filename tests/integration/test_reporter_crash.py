"""`kill -9` of the agent in the middle of an upload: nothing lost, nothing stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from proscribe.agent.spool import Spool
from proscribe.core.events import new_event
from tests.support.agent_harness import write_secret
from tests.support.collector_double import CollectorDouble
from tests.support.reporter_process import pending, start_reporter
from tests.support.waits import wait_for


def test_kill_9_mid_upload_then_restart_delivers_each_event_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    write_secret(state / "enroll.secret", "s3cret")
    spool = Spool(state / "spool.db")
    ids = []
    for i in range(20):
        event = new_event("process", rule="r", action="killed", process={"pid": i, "exe": "/x"})
        assert spool.append(event)
        ids.append(event["id"])
    spool.close()

    collector = CollectorDouble().start()
    collector.hold_events = True
    first = start_reporter(collector.url, state)
    second: subprocess.Popen[bytes] | None = None
    try:
        # the batch is stored by the collector, whose answer is held back: kill the agent now
        assert collector.events_received.wait(20), "the agent never uploaded"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        collector.hold_events = False
        collector.release_events.set()
        assert set(collector.events) == set(ids)
        assert pending(state / "spool.db") == 20  # never acknowledged: still pending

        second = start_reporter(collector.url, state)
        assert wait_for(lambda: pending(state / "spool.db") == 0, 20), "resend never acknowledged"
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
