"""An agent whose clock is an hour off still delivers: the real collector answers its signed
requests ``stale_request`` (more than 300 s of skew), the reporter takes the collector's time
from the answer's ``Date`` header and signs with it from then on. The reporter runs in its own
process with ``time.time`` shifted, against ``proscribe collector serve``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from proscribe.agent.spool import Spool
from proscribe.core.events import new_event
from tests.support.devserver import CollectorProcess
from tests.support.reporter_process import agent_state, pending, start_reporter
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow


def clock_offset(status_file: Path) -> float | None:
    """The reporter's learnt clock offset from its status file, once it is not zero."""
    try:
        offset = json.loads(status_file.read_text())["clock_offset_s"]
    except (OSError, ValueError, KeyError):
        return None
    return float(offset) if offset else None


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_an_agent_with_a_wrong_clock_still_delivers(tmp_path: Path, skew: float) -> None:
    url = f"sqlite:///{tmp_path / 'collector.db'}"
    state = agent_state(tmp_path, url)
    spool = Spool(state / "spool.db")
    assert all(
        spool.append_many(
            [new_event("dns", rule="deepseek-web", action="sinkholed") for _ in range(10)]
        )
    )
    spool.close()

    with CollectorProcess(tmp_path / "srv", url) as collector:
        agent = start_reporter(collector.url, state, skew)
        try:
            delivered = wait_for(lambda: pending(state / "spool.db") == 0, 30, step=0.05)
            assert delivered, "the skewed agent never delivered"
            engine = create_engine(url)
            with engine.connect() as conn:
                stored = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
            engine.dispose()
            assert stored == 10
            status_file = state / "reporter.json"
            offset = wait_for(lambda: clock_offset(status_file), 5, step=0.05)
            assert offset is not None and abs(offset + skew) < 5, offset
        finally:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(10)
    assert "Traceback" not in collector.log.read_text(errors="replace")
