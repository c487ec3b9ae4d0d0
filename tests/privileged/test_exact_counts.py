"""Exact counts across agent restarts (issue 13, item 4): one process is reported once, however
often the agent restarts. 40 violators run; the agent is killed with SIGKILL and restarted, then
stopped cleanly and restarted: the spool still counts 40 sightings, in the same events.

Monitor mode, so the violators keep running (they are this test's own processes, killed by pid
at the end).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_harness import (
    Procs,
    Signer,
    policy_text,
    running_agent,
    spool_events,
    write_config,
)
from tests.support.waits import wait_for

pytestmark = [pytest.mark.root, pytest.mark.linux]


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    started.cleanup()


def _sightings(state: Path, rule: str = "deepseek-desktop") -> tuple[int, int]:
    """(events, occurrences) of ``rule`` in the spool."""
    events = [e for e in spool_events(state) if e.get("rule") == rule]
    return len(events), sum(int(e["_count"]) for e in events)


def test_forty_running_violators_are_forty_sightings_across_restarts(
    tmp_path: Path, procs: Procs
) -> None:
    token = secrets.token_hex(3)
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text(token))
    config = write_config(tmp_path, signer, mode="monitor", process="netlink")
    state = tmp_path / "state"
    program = tmp_path / f"dsk{token}-runner"
    shutil.copy("/bin/sleep", program)
    log = tmp_path / "agent.log"
    with running_agent(config, log) as agent:
        for _ in range(40):
            procs.start([str(program), "120"])
        assert wait_for(lambda: _sightings(state)[1] == 40, timeout=10), _sightings(state)
        before = _sightings(state)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    with running_agent(config, log):  # after kill -9: the first sweep sees all 40 again
        time.sleep(2.0)  # the sweep, the checker and a fold pass
        assert _sightings(state) == before
    with running_agent(config, log):  # after a clean stop
        time.sleep(2.0)
        assert _sightings(state) == before
    assert before[1] == 40
    # a new process of the same program is a new sighting
    with running_agent(config, log):
        procs.start([str(program), "120"])
        assert wait_for(lambda: _sightings(state)[1] == 41, timeout=10), _sightings(state)
