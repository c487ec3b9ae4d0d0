"""The agent's real reporter (``proscribe.agent.reporter``) against the real collector
(``proscribe collector serve``): enroll, deliver a spool, heartbeat into the host table; after
``collector agent revoke`` the reporter re-enrolls and the spool still drains, each event once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from proscribe.agent.reporter import Reporter, reporter_for_url
from proscribe.agent.spool import Spool
from proscribe.collector.storage import open_database
from proscribe.collector.storage.agents import create_enroll_secret, revoke_agent
from proscribe.core.events import new_event
from tests.support.agent_harness import write_secret
from tests.support.devserver import CollectorProcess
from tests.support.waits import wait_for

pytestmark = pytest.mark.slow


def _scalar(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def _drain(reporter: Reporter, spool: Spool, timeout: float = 60.0) -> bool:
    """Turn the reporter's loop by hand until the spool is empty; True if it emptied."""

    def emptied() -> bool:
        reporter.run_once()
        return spool.stats().depth == 0

    return wait_for(emptied, timeout)


def test_reporter_delivers_spool_and_survives_revocation(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "srv") as server:
        db = open_database(server.database_url)
        with db.write() as conn:
            secret = create_enroll_secret(conn, "e2e", 0)[1]
        secret_file = tmp_path / "enroll.secret"
        write_secret(secret_file, secret + "\n")
        secret_file.chmod(0o600)
        spool = Spool(tmp_path / "spool.db")
        reporter = reporter_for_url(
            spool,
            url=server.url,
            ca_file=None,
            enroll_secret_file=secret_file,
            state_dir=tmp_path / "state",
        )
        try:
            for _ in range(30):
                assert spool.append(
                    new_event(
                        "dns",
                        rule="deepseek-web",
                        action="sinkholed",
                        dns={"qname": "chat.deepseek.com"},
                    )
                )
            assert _drain(reporter, spool)
            assert _scalar(server.database_url, "SELECT count(*) FROM events") == 30
            assert _scalar(server.database_url, "SELECT count(*) FROM hosts") == 1
            first_agent = reporter.status()["agent_id"]

            with db.write() as conn:
                assert revoke_agent(conn, first_agent, 1)
            for _ in range(20):
                spool.append(
                    new_event(
                        "process",
                        rule="deepseek-desktop",
                        action="killed",
                        process={"pid": 7, "name": "dsh"},
                    )
                )
            assert _drain(reporter, spool)
            assert reporter.status()["agent_id"] != first_agent
            assert _scalar(server.database_url, "SELECT count(*) FROM events") == 50
            assert _scalar(server.database_url, "SELECT count(DISTINCT event_id) FROM events") == 50
        finally:
            spool.close()
            db.dispose()


def test_a_revoked_machine_cannot_come_back_under_a_new_key_until_unbanned(tmp_path: Path) -> None:
    """Measured on main: a revoked agent made a new key, re-enrolled with the fleet secret in
    about a second and delivered its pending events. Now its machine is banned: the new key is
    refused, its events wait in its spool, and only an admin's unban lets them in."""
    from proscribe.collector.storage import admin_actions

    machine = "5eed" * 8
    with CollectorProcess(tmp_path / "srv") as server:
        db = open_database(server.database_url)
        with db.write() as conn:
            secret = create_enroll_secret(conn, "e2e", 0)[1]
        secret_file = write_secret(tmp_path / "enroll.secret", secret + "\n")
        spool = Spool(tmp_path / "spool.db")
        reporter = reporter_for_url(
            spool,
            url=server.url,
            ca_file=None,
            enroll_secret_file=secret_file,
            state_dir=tmp_path / "state",
            host_facts={
                "hostname": "ws-rogue",
                "os": "linux",
                "agent_version": "t",
                "machine_id": machine,
            },
        )

        def event() -> dict[str, object]:
            return new_event(
                "process", rule="deepseek-desktop", action="killed", process={"pid": 7}
            )

        try:
            spool.append(event())
            assert _drain(reporter, spool)
            first_agent = reporter.status()["agent_id"]
            with db.write() as conn:
                assert admin_actions.revoke_agent(
                    conn, first_agent, actor="admin", via="test", now_us=1
                )
            for _ in range(10):
                spool.append(event())
            for _ in range(6):  # revoked_agent → a new key → enrollment refused, repeatedly
                reporter.run_once()
                reporter._blocked_until = 0.0
            assert spool.stats().depth == 10
            assert "403 machine_banned" in str(reporter.status()["last_error"])
            assert _scalar(server.database_url, "SELECT count(*) FROM events") == 1
            with db.write() as conn:
                assert admin_actions.lift_ban(conn, machine, actor="admin", via="test", now_us=2)
            assert _drain(reporter, spool)
            assert _scalar(server.database_url, "SELECT count(*) FROM events") == 11
            assert reporter.status()["agent_id"] != first_agent
        finally:
            spool.close()
            db.dispose()
