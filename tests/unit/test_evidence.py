"""The evidence sink every recorder shares (agent/evidence.py): commit, then wake the reporter;
the host section with the collector-given agent id; a rejected policy as a tamper event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.agent.evidence import Evidence, HostSection, TamperRecorder, os_name
from proscribe.agent.spool import Spool
from proscribe.core.events import Event, new_event
from proscribe.core.policy.bundle import Offer
from proscribe.core.policy.loader import load_policy
from proscribe.core.policy.matchers import CompiledPolicy
from tests.support.agent_harness import policy_text, spool_events


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool.db")
    yield s
    s.close()


class Identity:
    def __init__(self) -> None:
        self.agent_id: str | None = None


class Refusing:
    def append(self, event: Event) -> bool:
        return False

    def bump_count(self, event_id: str, n: int = 1) -> bool:
        raise OSError("disk gone")


def test_a_committed_event_wakes_the_reporter_and_a_lost_one_does_not(spool: Spool) -> None:
    doorbell = threading.Event()
    evidence = Evidence(spool, HostSection("ws"), doorbell.set)
    assert evidence.commit(new_event("health", rule=None, action="reported"))
    assert doorbell.is_set()
    doorbell.clear()
    lost = Evidence(Refusing(), HostSection("ws"), doorbell.set)
    assert not lost.commit(new_event("health", rule=None, action="reported"))
    assert not lost.bump("some-id", 2)  # a failing spool is logged, not raised
    assert not doorbell.is_set()


def test_the_host_section_names_the_agent_id_once_the_collector_gave_one() -> None:
    identity = Identity()
    host = HostSection("ws-17", identity)
    assert host() == {"agent_id": "", "hostname": "ws-17", "os": os_name()}
    identity.agent_id = "agent-42"  # enrolled later, by the reporter's thread
    assert host()["agent_id"] == "agent-42"
    assert HostSection("ws-17")()["agent_id"] == ""  # no collector configured


def test_a_rejected_policy_is_a_committed_tamper_event_naming_the_policy_in_force(
    spool: Spool,
) -> None:
    compiled = CompiledPolicy.compile(load_policy(policy_text("abc123", serial=7).encode(), "p"))
    record = TamperRecorder(Evidence(spool, HostSection("ws")))
    record(Offer("rejected", "rollback", "serial 3 is older than 7", origin="p"), compiled)
    record(Offer("rejected", "bad_signature", "no valid signature", origin="p"), None)
    first, second = spool_events(spool.path.parent)
    assert first["kind"] == "tamper" and first["severity"] == "critical"
    assert first["policy"] == {"id": "test-ban", "serial": 7, "sha256": compiled.policy.sha256}
    assert first["detail"] == "policy rejected (rollback): serial 3 is older than 7"
    assert first["host"]["hostname"] == "ws"
    assert "policy" not in second  # nothing in force yet
