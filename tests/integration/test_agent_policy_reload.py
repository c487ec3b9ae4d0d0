"""Policy loading in the daemon (in-process, real files, real watchdog): last known good across a
restart, a tampered file at start, a newer serial picked up from the watched file."""

from __future__ import annotations

from pathlib import Path

from proscribe.agent.config import load_agent_config
from proscribe.agent.daemon import build
from tests.support.agent_harness import Signer, policy_text, spool_events, write_config
from tests.support.waits import wait_for


def tamper_events(state: Path) -> list[dict[str, object]]:
    return [e for e in spool_events(state) if e["kind"] == "tamper"]


def test_tampered_file_at_start_keeps_the_last_good_policy(tmp_path: Path) -> None:
    signer = Signer()
    policy = tmp_path / "policy.toml"
    signer.write(policy, policy_text("aaa111", serial=4))
    config = load_agent_config(write_config(tmp_path, signer, process="off"))
    first = build(config, with_reporter=False, with_dns=False)
    assert first.policy.compiled is not None
    assert first.policy.compiled.policy.meta.serial == 4
    first.shutdown()

    policy.write_bytes(policy.read_bytes().replace(b"Test ban", b"Test bam"))
    second = build(config, with_reporter=False, with_dns=False)
    try:
        assert second.policy.compiled is not None
        assert second.policy.compiled.policy.meta.serial == 4  # the last good one, from state
        events = tamper_events(tmp_path / "state")
        assert len(events) == 1 and "bad_signature" in str(events[0]["detail"])
        assert events[0]["policy"] == {
            "id": "test-ban",
            "serial": 4,
            "sha256": second.policy.compiled.policy.sha256,
        }
        status = second.status()["policy"]
        assert status["serial"] == 4 and status["rejections"] == 1
        assert status["last_rejection"]["kind"] == "bad_signature"
    finally:
        second.shutdown()


def test_a_newer_signed_policy_is_picked_up_from_the_watched_file(tmp_path: Path) -> None:
    signer = Signer()
    policy = tmp_path / "policy.toml"
    signer.write(policy, policy_text("bbb222", serial=1))
    config = load_agent_config(write_config(tmp_path, signer, process="poll"))
    daemon = build(config, with_reporter=False, with_dns=False)
    daemon.start()  # returns with the directory watch in place: no pause needed
    try:
        signer.write(policy, policy_text("bbb222", serial=2))
        assert wait_for(
            lambda: (
                daemon.policy.compiled is not None
                and daemon.policy.compiled.policy.meta.serial == 2
            ),
            10,
        )
        assert tamper_events(tmp_path / "state") == []
        # the file is deleted: reported, and the policy stays in force
        policy.unlink()
        assert wait_for(lambda: tamper_events(tmp_path / "state"), 10)
        assert daemon.policy.compiled is not None
        assert daemon.policy.compiled.policy.meta.serial == 2
    finally:
        daemon.stop()
        daemon.shutdown()


def test_no_policy_at_all_runs_without_rules_and_says_so(tmp_path: Path) -> None:
    signer = Signer()
    config = load_agent_config(write_config(tmp_path, signer, process="off"))
    daemon = build(config, with_reporter=False, with_dns=False)
    try:
        assert daemon.policy.compiled is None
        status = daemon.status()["policy"]
        assert status["id"] is None and status["stale"] is True
        assert tamper_events(tmp_path / "state") == []
    finally:
        daemon.shutdown()


def test_a_collector_policy_supersedes_the_file_without_a_false_tamper(tmp_path: Path) -> None:
    from proscribe.core.policy.envelope import sign_payload

    signer = Signer()
    policy = tmp_path / "policy.toml"
    signer.write(policy, policy_text("ccc333", serial=1))
    config = load_agent_config(write_config(tmp_path, signer, process="off"))
    daemon = build(config, with_reporter=False, with_dns=False)
    try:
        newer = policy_text("ccc333", serial=2).encode()
        offer = daemon.policy.offer(newer, sign_payload(newer, signer.key).to_bytes(), "collector")
        assert offer.accepted
        assert daemon.policy.load_file() is None  # the older file on disk is superseded
        assert tamper_events(tmp_path / "state") == []
        # but a changed file with a lower serial is still a rollback
        signer.write(policy, policy_text("ccc333", serial=1, action="report"))
        rejected = daemon.policy.load_file()
        assert rejected is not None and rejected.kind == "rollback"
        assert len(tamper_events(tmp_path / "state")) == 1
        assert daemon.policy.compiled is not None
        assert daemon.policy.compiled.policy.meta.serial == 2
    finally:
        daemon.shutdown()
