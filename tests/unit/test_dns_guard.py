"""DnsGuard: one event per (rule, process, name) per window, repeats counted, never lost (the
agent's one repeat rule, agent/repeats.py, applied to DNS)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.agent.dns_guard import DnsGuard
from proscribe.agent.evidence import Evidence, HostSection
from proscribe.agent.sensors.dns.observation import DnsObservation
from proscribe.agent.spool import Spool
from proscribe.core.policy.loader import load_policy
from proscribe.core.policy.matchers import CompiledPolicy
from tests.support.agent_harness import spool_events

POLICY = b"""
[meta]
schema = 1
id = "t"
serial = 1
issued = 2026-01-01T00:00:00Z
expires = 2099-01-01T00:00:00Z
title = "test"

[[domain]]
id = "deepseek-web"
names = ["deepseek.com"]
action = "report"
"""


class _Policy:
    def __init__(self) -> None:
        self.compiled = CompiledPolicy.compile(load_policy(POLICY, "t.toml"))

    def now(self) -> datetime:
        return datetime.now(UTC)


def _observation(
    process: dict[str, Any] | None, reason: str | None = None, name: str = "chat.deepseek.com"
) -> DnsObservation:
    return DnsObservation(
        qname=name,
        qtype="A",
        direction="query",
        names_to_check=(name,),
        src_ip="127.0.0.1",
        src_port=40000,
        dst_ip="127.0.0.1",
        dst_port=53,
        transport="udp",
        resolver="127.0.0.1",
        time=time.time(),
        process=process,
        attribution_reason=reason,
    )


def _guard(tmp_path: Path) -> tuple[DnsGuard, Spool]:
    spool = Spool(tmp_path / "spool.db")
    guard = DnsGuard(
        policy=_Policy(),  # type: ignore[arg-type]
        evidence=Evidence(spool, HostSection("h")),
        hostname="h",
        window=60.0,
    )
    return guard, spool


def _dns_events(spool: Spool) -> list[dict[str, Any]]:
    """Unsent ``dns`` events with their counts, read beside the spool (not taken for sending)."""
    events = spool_events(spool.path.parent)
    return [e for e in events if e["kind"] == "dns" and e["_state"] == "pending"]


def test_repeats_fold_into_the_unsent_event(tmp_path: Path) -> None:
    guard, spool = _guard(tmp_path)
    proc = {"pid": 4242, "name": "curl", "exe": "/usr/bin/curl", "user": "alice"}
    for _ in range(5):
        guard.on_observation(_observation(proc))
    guard.flush_repeats()  # the daemon's loop does this every half second
    events = _dns_events(spool)
    assert len(events) == 1
    assert events[0]["_count"] == 5
    assert events[0]["process"]["pid"] == 4242
    assert guard.counts["folded"] == 4


def test_repeats_after_the_event_was_sent_travel_in_one_new_event(tmp_path: Path) -> None:
    guard, spool = _guard(tmp_path)
    proc = {"pid": 4242, "name": "curl", "exe": "/usr/bin/curl", "user": "alice"}
    guard.on_observation(_observation(proc))
    spool.ack([e.id for e in spool.pending()])  # the reporter delivered it
    for _ in range(7):
        guard.on_observation(_observation(proc))
    assert _dns_events(spool) == []  # no event per query
    assert guard.flush_repeats() == 1
    events = _dns_events(spool)
    assert len(events) == 1 and events[0]["_count"] == 7
    assert "7 repeat(s) after the first report" in events[0]["detail"]
    assert guard.flush_repeats() == 0  # nothing twice
    # another process asking the same name is its own event
    guard.on_observation(_observation({**proc, "pid": 4243}))
    assert [e["process"]["pid"] for e in _dns_events(spool)] == [4242, 4243]


def test_a_thousand_random_subdomains_are_one_event(tmp_path: Path) -> None:
    """Measured in the issue: one process asking 1,000 random subdomains made 1,000 events."""
    guard, spool = _guard(tmp_path)
    proc = {"pid": 4242, "name": "curl", "exe": "/usr/bin/curl", "user": "alice"}
    for i in range(1000):
        guard.on_observation(_observation(proc, name=f"r{i:04d}x.deepseek.com"))
    guard.flush_repeats()
    (event,) = _dns_events(spool)
    assert event["_count"] == 1000
    assert event["dns"]["qname"] == "r0000x.deepseek.com"
    # another process is its own event; a look-alike name is none
    guard.on_observation(_observation({**proc, "pid": 4243}, name="a.deepseek.com"))
    guard.on_observation(_observation(proc, name="deepseek.com.example"))
    assert [e["process"]["pid"] for e in _dns_events(spool)] == [4242, 4243]
    # once sent, the window's later names travel in one event naming a sample of them
    spool.ack([e.id for e in spool.pending()])
    for i in range(50):
        guard.on_observation(_observation(proc, name=f"s{i}.deepseek.com"))
    guard.flush_repeats()
    (later,) = _dns_events(spool)
    assert later["_count"] == 50
    assert "names in this window: r0000x.deepseek.com, r0001x.deepseek.com" in later["detail"]


def test_an_unattributed_query_says_why(tmp_path: Path) -> None:
    guard, spool = _guard(tmp_path)
    guard.on_observation(_observation(None, "socket closed before lookup"))
    (event,) = _dns_events(spool)
    assert "process" not in event or event["process"] is None
    assert "process not attributed: socket closed before lookup" in event["detail"]


def test_capture_reports_a_denied_name_in_any_question(tmp_path: Path) -> None:
    """Measured in the issue: a 10-question query with the denied name fifth was not
    reported by capture (only the first question was checked)."""
    import dns.message
    import dns.name
    import dns.rdataclass
    import dns.rdatatype

    from proscribe.agent.sensors.dns.message import parse_message

    names = [f"q{i}.allowed.example" for i in range(10)]
    names[4] = "chat.deepseek.com"
    message = dns.message.make_query(names[0], "A")
    for name in names[1:]:
        message.find_rrset(
            message.question, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.A,
            create=True,
        )  # fmt: skip
    facts = parse_message(message.to_wire())
    assert facts.qname == "q0.allowed.example" and facts.questions[4] == "chat.deepseek.com"
    observation = DnsObservation.from_facts(
        facts, src=("127.0.0.1", 40000), dst=("127.0.0.1", 53), transport="udp", time=time.time()
    )
    guard, spool = _guard(tmp_path)
    guard.on_observation(observation)
    (event,) = _dns_events(spool)
    assert event["rule"] == "deepseek-web" and event["action"] == "reported"
    # the same ten questions without it: nothing
    names[4] = "deepseek.com.example"
    innocent = dns.message.make_query(names[0], "A")
    for name in names[1:]:
        innocent.find_rrset(
            innocent.question, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.A,
            create=True,
        )  # fmt: skip
    guard.on_observation(
        DnsObservation.from_facts(
            parse_message(innocent.to_wire()),
            src=("127.0.0.1", 40001),
            dst=("127.0.0.1", 53),
            transport="udp",
            time=time.time(),
        )
    )
    assert len(_dns_events(spool)) == 1
