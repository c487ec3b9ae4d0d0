"""The real ``proscribe collector serve`` killed with SIGKILL while it forwards a backlog to
rsyslogd, then started again: every event arrives, and the only duplicates are of the batch
that was in flight (same ids). The restarted process waits out the dead one's lease
(``lease = 3`` seconds here; 30 by default)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from sqlalchemy import select

from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.events import insert_events
from proscribe.collector.storage.tables import forward_state
from tests.support.devserver import CollectorProcess
from tests.support.forward_env import event_rows
from tests.support.rsyslog import Rsyslog, available, sd_params
from tests.support.waits import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.linux,
    pytest.mark.skipif(not available(), reason="rsyslog is not installed"),
]
N = 3000
BATCH = 100
LEASE_S = 3


def test_sigkill_mid_backlog_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'collector.db'}"
    db = open_database(url)
    upgrade(db)
    rows = event_rows(N)
    with db.write() as conn:
        insert_events(conn, rows)

    def cursor() -> int:
        with db.read() as conn:
            value = conn.execute(select(forward_state.c.cursor_seq)).scalar_one_or_none()
            return int(value or 0)

    with Rsyslog(tmp_path / "rsyslog") as receiver:
        table = (
            f'[[forward]]\nname = "siem"\nkind = "syslog"\n'
            f'url = "tcp://127.0.0.1:{receiver.port}"\nbatch_size = {BATCH}\nrate = 10.0\n'
            f"lease = {LEASE_S}\n"
        )
        collector = CollectorProcess(tmp_path / "run", url, extra_toml=table)
        collector.start()
        try:
            assert wait_for(lambda: cursor() >= N // 4, timeout=60)
            collector.kill9()
            at_kill = cursor()
            assert at_kill < N  # killed mid-backlog
            collector.start()
            assert wait_for(lambda: cursor() >= N, timeout=LEASE_S + 60)
            assert wait_for(lambda: len(receiver.received()) >= N, timeout=30)
        finally:
            collector.stop()
    db.dispose()
    ids = [sd_params(r.sd)["id"] for r in receiver.received()]
    expected = [r["event_id"] for r in rows]
    assert set(ids) == set(expected)  # nothing lost
    twice = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert len(twice) <= BATCH  # only the batch in flight at the kill
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == expected  # in order
