"""The composition root end to end (in-process daemon, real files, a loopback collector double):
what build() wires is what reaches the collector — the heartbeat names the parts' states, and an
event recorded by a guard carries the agent id the collector gave, through the identity built
before any recorder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.agent.config import load_agent_config
from proscribe.agent.daemon import build
from proscribe.agent.evidence import os_name
from tests.support.agent_harness import Signer, policy_text, wait_for, write_config, write_secret
from tests.support.collector_double import CollectorDouble


@pytest.fixture
def collector() -> Iterator[CollectorDouble]:
    double = CollectorDouble().start()
    yield double
    double.stop()


def test_heartbeat_and_events_carry_what_build_wired(
    tmp_path: Path, collector: CollectorDouble
) -> None:
    signer = Signer()
    policy = tmp_path / "policy.toml"
    signer.write(policy, policy_text("cmp123", serial=2))
    secret = tmp_path / "enroll.secret"
    write_secret(secret, collector.secret)
    config_path = write_config(
        tmp_path,
        signer,
        process="poll",
        extra=f'\n[collector]\nurl = "{collector.url}"\nenroll_secret_file = "{secret}"\n',
    )
    daemon = build(load_agent_config(config_path))
    assert daemon.reporter is not None
    daemon.start()
    try:
        beat = wait_for(lambda: collector.heartbeats[-1] if collector.heartbeats else None, 10)
        assert beat is not None, collector.log
        assert beat["sensors"] == {
            "process": "running",
            "dns": "off",
            "models": "running",
            "dns_dropped": 0,
        }
        assert (beat["hostname"], beat["mode"]) == ("test-host", "enforce")
        assert beat["policy"]["serial"] == 2
        (agent_id,) = collector.agents
        # a guard records (a policy file that fails its signature: the tamper recorder)
        policy.write_bytes(policy.read_bytes().replace(b"Test ban", b"Test bam"))

        def tamper() -> list[dict[str, object]]:
            return [e for e in collector.events.values() if e["kind"] == "tamper"]

        events = wait_for(tamper, 15)
        assert events, collector.log
        assert events[0]["host"] == {"agent_id": agent_id, "hostname": "test-host", "os": os_name()}
    finally:
        daemon.stop()
        daemon.shutdown()
