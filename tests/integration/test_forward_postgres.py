"""Forwarding on PostgreSQL, where ``seq`` is taken at insert and becomes visible at commit: a
later ``seq`` committed first must not let the cursor pass an earlier one still being written
(that event would never be sent). A gap holds the cursor until it is filled, or until every
transaction that was writing when it was looked at has ended (rolled back, or a sequence number
spent by ON CONFLICT DO NOTHING)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proscribe.collector.forward.store import GAP_GRACE_S, ForwardStore
from proscribe.collector.storage import Database, open_database, upgrade
from proscribe.collector.storage.events import insert_events
from tests.support.clock import ManualClock
from tests.support.forward_env import events, forwarding_collector
from tests.support.postgres import throwaway_database
from tests.support.rsyslog import Rsyslog, available, sd_params
from tests.support.waits import wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def db() -> Iterator[Database]:
    with throwaway_database("proscribe_fwd") as url:
        database = open_database(url)
        upgrade(database)
        yield database
        database.dispose()


def _row(n: int) -> dict[str, Any]:
    return {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        # One counts row and one 8-day block row each (another agent, another host):
        # concurrent writers of one row queue, and these tests hold a writer open.
        "agent_id": f"a{n}",
        "time_us": n,
        "received_us": n,
        "hostname": f"h{n}",
        "username": None,
        "rule": "r",
        "kind": "process",
        "action": "killed",
        "severity": "high",
        "body": "{}",
    }


def _ids(batch: list[Any]) -> list[str]:
    return [row.event_id[-3:] for row in batch]


def test_an_uncommitted_earlier_seq_holds_the_cursor_until_it_commits(db: Database) -> None:
    clock = ManualClock()
    store = ForwardStore(db, "siem", "me")
    slow = db.engine.connect()
    slow_tx = slow.begin()
    insert_events(slow, [_row(1)])  # takes seq 1, not committed yet
    with db.write() as conn:
        insert_events(conn, [_row(2)])  # seq 2, committed first
    assert store.next_batch(0, 100, clock()) == []
    clock.advance(GAP_GRACE_S + 1)
    assert store.next_batch(0, 100, clock()) == []  # the writer of seq 1 is still running
    clock.advance(120)
    assert store.next_batch(0, 100, clock()) == []
    slow_tx.commit()
    slow.close()
    assert wait_for(lambda: _ids(store.next_batch(0, 100, clock()))) == ["001", "002"]


def test_a_gap_left_by_a_rollback_or_a_duplicate_settles(db: Database) -> None:
    clock = ManualClock()
    store = ForwardStore(db, "siem", "me")
    with db.write() as conn:
        insert_events(conn, [_row(1)])
    doomed = db.engine.connect()
    doomed_tx = doomed.begin()
    insert_events(doomed, [_row(2)])  # seq 2, will roll back
    with db.write() as conn:
        insert_events(conn, [_row(3)])  # seq 3
        insert_events(conn, [_row(1)])  # a duplicate: spends seq 4, stores nothing
        insert_events(conn, [_row(5)])  # seq 5
    assert _ids(store.next_batch(0, 100, clock())) == ["001"]  # stops at the gap
    doomed_tx.rollback()
    doomed.close()
    assert _ids(store.next_batch(1, 100, clock())) == []  # first look: within the grace
    clock.advance(GAP_GRACE_S)
    # after the grace a snapshot is taken; once what was writing then has ended (here, at
    # once; on a shared server, other databases' writers count too) the gap settles. The next
    # one (the duplicate's spent seq 4) waits its own grace.
    assert wait_for(lambda: _ids(store.next_batch(1, 100, clock()))) == ["003"]
    assert _ids(store.next_batch(3, 100, clock())) == []
    clock.advance(GAP_GRACE_S)
    assert wait_for(lambda: _ids(store.next_batch(3, 100, clock()))) == ["005"]


@pytest.mark.skipif(not available(), reason="rsyslog is not installed")
def test_forwarding_from_postgresql_to_rsyslog(tmp_path: Path) -> None:
    with (
        throwaway_database("proscribe_fwd") as url,
        Rsyslog(tmp_path / "rsyslog") as receiver,
        forwarding_collector(
            tmp_path,
            [{"name": "siem", "kind": "syslog", "url": f"tcp://127.0.0.1:{receiver.port}"}],
            database_url=url,
        ) as env,
    ):
        posted = events(40)
        env.post(posted[:20])
        env.post(posted[20:])
        assert wait_for(lambda: len(receiver.received()) >= 40, timeout=30)
        assert wait_for(lambda: env.status()["siem"].lag_events == 0)
    assert [sd_params(r.sd)["id"] for r in receiver.received()] == [e["id"] for e in posted]


@pytest.mark.skipif(not available(), reason="rsyslog is not installed")
def test_two_replicas_forward_each_event_once(tmp_path: Path) -> None:
    """Both replicas have the same [[forward]] table; the lease lets one forward it."""
    with throwaway_database("proscribe_fwd") as url, Rsyslog(tmp_path / "rsyslog") as receiver:
        table = [{"name": "siem", "kind": "syslog", "url": f"tcp://127.0.0.1:{receiver.port}"}]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            forwarding_collector(tmp_path / "a", table, database_url=url) as a,
            forwarding_collector(tmp_path / "b", table, database_url=url) as b,
        ):
            posted = events(30)
            a.post(posted[:15])
            b.post(posted[15:])
            assert wait_for(lambda: len(receiver.received()) >= 30, timeout=30)
            assert wait_for(lambda: a.status()["siem"].lag_events == 0)
            holder = a.status()["siem"].lease_owner
            assert holder is not None and holder == b.status()["siem"].lease_owner
    ids = [sd_params(r.sd)["id"] for r in receiver.received()]
    assert ids == [e["id"] for e in posted]  # once each, in order
