"""Group commit: concurrent batches share a transaction; a refusal stays its owner's alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from proscribe.collector.storage import open_database
from proscribe.collector.storage.group_commit import GroupCommit


@pytest.fixture
def committer(tmp_path: Path) -> GroupCommit:
    db = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
    return GroupCommit(db)


def _rows(committer: GroupCommit) -> list[int]:
    with committer._db.read() as conn:
        return [r[0] for r in conn.execute(text("SELECT v FROM t ORDER BY v"))]


def test_concurrent_units_are_committed_in_fewer_transactions(committer: GroupCommit) -> None:
    results: dict[int, int] = {}

    def work_for(v: int):  # type: ignore[no-untyped-def]
        def work(conn: Connection) -> int:
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
            time.sleep(0.002)  # a little work inside the transaction, as an insert of 100 is
            return v * 10

        return work

    def post(v: int) -> None:
        results[v] = committer.run(work_for(v))

    threads = [threading.Thread(target=post, args=(v,)) for v in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {v: v * 10 for v in range(64)}
    assert _rows(committer) == list(range(64))
    assert committer.units == 64
    assert committer.groups < 64  # at least some units shared a commit


def test_a_unit_that_refuses_fails_alone(committer: GroupCommit) -> None:
    def refuse(_conn: Connection) -> int:
        raise PermissionError("replayed nonce")

    def good(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (v) VALUES (1)"))
        return 1

    with pytest.raises(PermissionError):
        committer.run(refuse)
    assert committer.run(good) == 1
    assert _rows(committer) == [1]


def test_a_database_error_fails_the_group_and_stores_nothing(committer: GroupCommit) -> None:
    def clash(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (v) VALUES (7)"))
        conn.execute(text("INSERT INTO nowhere (v) VALUES (7)"))  # no such table
        return 7

    with pytest.raises(Exception, match="nowhere"):
        committer.run(clash)
    assert _rows(committer) == []
