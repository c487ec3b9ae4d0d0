"""The durable spool: caps, eviction order, drop counters, duplicates, corruption, threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proscribe.agent.spool import Spool, SpooledEvent, SpoolStats
from proscribe.core.events import new_event


def violation(rule: str = "deepseek", exe: str = "/opt/ds/deepseek", **kw: Any) -> dict[str, Any]:
    return new_event(
        "process",
        rule=rule,
        action="killed",
        process={"pid": kw.pop("pid", 100), "name": "deepseek", "exe": exe, "user": "alice"},
        **kw,
    )


def health(detail: str = "sensor restarted") -> dict[str, Any]:
    return new_event("health", rule=None, action="reported", detail=detail)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool.db")
    yield s
    s.close()


def test_public_names() -> None:
    import proscribe.agent.spool as pkg

    assert sorted(pkg.__all__) == ["Spool", "SpoolStats", "SpooledEvent"]


def test_file_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    assert s._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # 2 = FULL
    assert s._db().execute("PRAGMA synchronous").fetchone()[0] == 2
    s.close()


def test_append_pending_ack_roundtrip(spool: Spool) -> None:
    events = [violation(pid=i) for i in range(3)]
    assert all(spool.append(e) for e in events)
    got = spool.pending()
    assert [g.id for g in got] == [e["id"] for e in events]
    assert isinstance(got[0], SpooledEvent)
    assert got[0].event == events[0]
    assert got[0].size > 0
    assert spool.ack([events[0]["id"], events[1]["id"]]) == 2
    assert [g.id for g in spool.pending()] == [events[2]["id"]]
    stats = spool.stats()
    assert isinstance(stats, SpoolStats)
    assert (stats.depth, stats.sent) == (1, 2)
    assert stats.last_ack_time is not None
    # acknowledged rows stay as history for `agent events`, newest first
    assert [r.state for r in spool.recent(10)] == ["pending", "sent", "sent"]
    assert [r.id for r in spool.recent(10, include_sent=False)] == [events[2]["id"]]


def test_same_id_twice_is_a_no_op(spool: Spool) -> None:
    event = violation()
    assert spool.append(event)
    assert spool.append(dict(event, detail="changed"))
    rows = spool.pending()
    assert len(rows) == 1
    assert "detail" not in rows[0].event
    assert spool.stats().depth == 1


def test_pending_respects_limit_and_bytes(spool: Spool) -> None:
    for i in range(10):
        spool.append(violation(pid=i, detail="x" * 1000))
    assert len(spool.pending(limit=4)) == 4
    one = spool.pending(limit=1)[0].size
    assert len(spool.pending(limit=100, max_bytes=one * 3 + 1)) == 3
    # a single row bigger than max_bytes still comes out alone (so it can be dead-lettered)
    assert len(spool.pending(max_bytes=10)) == 1


def test_dead_letter_leaves_delivery_and_is_counted(spool: Spool) -> None:
    a, b = violation(pid=1), violation(pid=2)
    spool.append(a)
    spool.append(b)
    assert spool.dead_letter([a["id"]], "rejected: bad field") == 1
    assert [r.id for r in spool.pending()] == [b["id"]]
    dead = [r for r in spool.recent() if r.state == "dead"]
    assert dead[0].error == "rejected: bad field"
    assert spool.stats().dead_lettered == 1
    # an acknowledged row cannot be dead-lettered afterwards, nor acknowledged twice
    spool.ack([b["id"]])
    assert spool.dead_letter([b["id"]], "late") == 0
    assert spool.ack([b["id"]]) == 0


def test_bump_count_folds_into_unsent_only(spool: Spool) -> None:
    event = violation()
    spool.append(event)
    assert spool.bump_count(event["id"], 2)
    assert spool.bump_count(event["id"])
    [row] = spool.pending()
    assert row.count == 4
    assert row.event["count"] == 4
    # in flight (handed out by pending()) -> refused, so the caller spools a new event
    assert not spool.bump_count(event["id"])
    spool.ack([event["id"]])
    assert not spool.bump_count(event["id"])
    assert not spool.bump_count("no-such-id")


def test_history_is_capped(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", history_limit=5)
    ids = []
    for i in range(12):
        e = violation(pid=i)
        s.append(e)
        ids.append(e["id"])
    s.pending(limit=100)
    s.ack(ids)
    assert [r.id for r in s.recent(100)] == ids[::-1][:5]
    assert s.stats().sent == 12
    s.close()


def test_event_cap_evicts_health_first(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_events=5)
    v = [violation(rule=f"r{i}") for i in range(3)]
    h = [health(f"h{i}") for i in range(2)]
    for e in (v[0], h[0], v[1], h[1], v[2]):
        assert s.append(e)
    extra = violation(rule="r9")
    assert s.append(extra)
    ids = {r.id for r in s.pending(100)}
    assert h[0]["id"] not in ids  # oldest health row went first
    assert h[1]["id"] in ids
    assert {e["id"] for e in v} <= ids
    assert s.stats().dropped == {"evicted_health": 1}
    s.close()


def test_sent_history_goes_before_anything_pending(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_events=3)
    a, b, c, d = (violation(pid=i) for i in range(4))
    for e in (a, b, c):
        s.append(e)
    s.pending(1)
    s.ack([a["id"]])
    assert s.append(d)
    assert [r.id for r in s.pending()] == [b["id"], c["id"], d["id"]]
    assert s.stats().dropped == {}  # delivered history is not a drop
    s.close()


def test_repeats_fold_into_counts_before_violations_are_evicted(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_events=5)
    first = violation(rule="a", pid=1)
    s.append(first)
    repeats = [violation(rule="a", pid=10 + i) for i in range(3)]  # same exe/user, new pids
    other = violation(rule="b", exe="/usr/bin/lms")
    for e in (*repeats, other):
        s.append(e)
    newcomer = violation(rule="c")
    assert s.append(newcomer)
    rows = s.pending(100)
    by_id = {r.id: r for r in rows}
    assert by_id[first["id"]].count == 4  # 1 + 3 folded repeats
    assert other["id"] in by_id and newcomer["id"] in by_id
    assert len(rows) == 3
    assert s.stats().dropped == {"folded": 3}
    s.close()


def test_oldest_violations_evicted_but_first_of_each_rule_kept(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_events=4)
    # distinct executables: nothing folds
    a1, a2, a3 = (violation(rule="a", exe=f"/bin/a{i}") for i in range(3))
    b1 = violation(rule="b", exe="/bin/b")
    for e in (a1, a2, b1, a3):
        s.append(e)
    b2 = violation(rule="b", exe="/bin/b2")
    assert s.append(b2)
    ids = [r.id for r in s.pending(100)]
    # a1 (first of a) and b1 (first of b) survive; a2 is the oldest non-first
    assert ids == [a1["id"], b1["id"], a3["id"], b2["id"]]
    assert s.stats().dropped == {"evicted_oldest": 1}
    s.close()


def test_full_of_first_violations_refuses_and_counts(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_events=2)
    assert s.append(violation(rule="a"))
    assert s.append(violation(rule="b"))
    assert not s.append(violation(rule="c"))
    assert s.stats().dropped == {"full": 1}
    assert s.stats().depth == 2
    s.close()


def test_byte_cap_evicts_and_oversized_event_refused(tmp_path: Path) -> None:
    probe = violation(rule="a", exe="/bin/x0", detail="x" * 900)
    import json

    size = len(json.dumps(probe, separators=(",", ":")).encode())
    s = Spool(tmp_path / "spool.db", max_bytes=size * 3 + 10)
    events = [violation(rule="a", exe=f"/bin/x{i}", detail="x" * 900) for i in range(5)]
    for e in events:
        assert s.append(e)
    st = s.stats()
    assert st.bytes <= size * 3 + 10
    assert st.depth == 3
    assert st.dropped == {"evicted_oldest": 2}
    kept = [r.id for r in s.pending(100)]
    assert kept[0] == events[0]["id"]  # first of rule a
    assert not s.append(violation(detail="y" * (size * 4)))
    assert s.stats().dropped["too_large"] == 1
    s.close()


def test_in_flight_rows_are_not_evicted(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_events=3)
    hs = [health(f"h{i}") for i in range(3)]
    for e in hs:
        s.append(e)
    in_flight = s.pending(limit=2)
    assert s.append(violation())
    remaining = {r.id for r in s.pending(100)}
    assert {r.id for r in in_flight} <= remaining
    assert hs[2]["id"] not in remaining
    s.close()


def test_counters_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    s = Spool(path, max_events=1)
    s.append(health())
    s.append(health("again"))
    s.close()
    s = Spool(path, max_events=1)
    assert s.stats().dropped == {"evicted_health": 1}
    assert s.stats().depth == 1
    s.close()


def test_not_a_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not sqlite at all" * 200)
    s = Spool(path)
    st = s.stats()
    assert st.corrupt_moved_to is not None
    moved = Path(st.corrupt_moved_to)
    assert moved.name.startswith("spool.db.corrupt-")
    assert moved.read_bytes().startswith(b"this is not sqlite")
    assert st.corrupt_replaced == 1
    assert "corrupt" in caplog.text
    assert s.append(violation())
    assert s.stats().depth == 1
    s.close()


def test_reader_does_not_move_a_corrupt_file(tmp_path: Path) -> None:
    from proscribe.core.errors import SpoolError

    path = tmp_path / "spool.db"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(SpoolError, match="corrupt"):
        Spool(path, recover=False)
    assert path.read_bytes().startswith(b"garbage")
    assert not list(tmp_path.glob("spool.db.corrupt-*"))


def test_damaged_pages_fail_integrity_check_and_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    s = Spool(path)
    for i in range(300):
        s.append(violation(pid=i, detail="z" * 200))
    s.close()
    # Checkpointed into the main file by close(); scribble over the middle pages.
    raw = bytearray(path.read_bytes())
    assert len(raw) > 8 * 4096
    for offset in range(4096 * 2, len(raw) - 4096, 4096):
        raw[offset + 10 : offset + 400] = b"\xff" * 390
    path.write_bytes(bytes(raw))
    s = Spool(path)
    stats = s.stats()
    assert stats.corrupt_moved_to is not None
    # whatever could still be read was re-spooled, and only that
    assert stats.depth == stats.corrupt_salvaged < 300
    assert s.append(violation())
    s.close()


def test_unsent_events_are_salvaged_from_a_file_with_a_damaged_index(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "spool.db"
    s = Spool(path)
    sent = [violation(pid=1000 + i) for i in range(5)]
    unsent = [violation(pid=i, detail="z" * 100) for i in range(250)]
    assert all(s.append_many(sent + unsent))
    batch = s.pending(limit=5)
    assert [b.event["id"] for b in batch] == [e["id"] for e in sent]
    s.ack([b.id for b in batch])  # these reached the collector: not to be sent again
    s.close()
    # Point one index at another's pages: integrity_check fails, the table itself is intact.
    conn = sqlite3.connect(path)
    roots = dict(
        conn.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'index'").fetchall()
    )
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET rootpage = ? WHERE name = 'events_fold_seq'",
        (roots["events_state_seq"],),
    )
    conn.commit()
    conn.close()

    s = Spool(path)
    stats = s.stats()
    assert stats.corrupt_moved_to is not None and stats.corrupt_replaced == 1
    assert stats.corrupt_salvaged == 250 and stats.depth == 250
    recovered = [b.event["id"] for b in s.pending(limit=500)]
    assert recovered == [e["id"] for e in unsent]  # in order, none of the sent ones
    s.close()
    s = Spool(path)  # the fresh file is healthy: nothing more happens on reopen
    assert s.stats().corrupt_salvaged == 250 and s.stats().depth == 250
    s.close()


def test_unopenable_path_raises_and_moves_nothing(tmp_path: Path) -> None:
    from proscribe.core.errors import SpoolError

    path = tmp_path / "sub"
    path.write_text("a file where the spool's directory should be")
    with pytest.raises(SpoolError):
        Spool(path / "spool.db")
    assert path.read_text().startswith("a file")


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    per_thread, threads = 60, 6
    ids: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def sensor(n: int) -> None:
        try:
            for i in range(per_thread):
                e = violation(pid=n * 1000 + i, rule=f"r{n}")
                assert s.append(e)
                ids[n].append(e["id"])
        except BaseException as err:  # surfaced below
            errors.append(err)

    def reporter(stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                batch = s.pending(limit=50)
                s.ack([r.id for r in batch[::2]])
                s.stats()
        except BaseException as err:
            errors.append(err)

    stop = threading.Event()
    rt = threading.Thread(target=reporter, args=(stop,))
    rt.start()
    workers = [threading.Thread(target=sensor, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    rt.join()
    assert not errors
    st = s.stats()
    assert st.depth + st.sent == per_thread * threads
    stored = {
        r[0] for r in s._db().execute("SELECT id FROM events").fetchall()
    }  # history cap 1000 > 360
    assert stored == {i for chunk in ids for i in chunk}
    s.close()
    # and the file is sound
    conn = sqlite3.connect(tmp_path / "spool.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_append_many_is_one_commit_with_the_same_rules(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db", max_events=3)
    a, b = violation(rule="a"), violation(rule="b")
    assert s.append_many([a, b, dict(a), violation(rule="c"), violation(rule="d")]) == [
        True,
        True,
        True,  # same id again within the burst: no-op
        True,
        False,  # three firsts of their rules fill the spool
    ]
    assert s.stats().depth == 3
    assert s.stats().dropped == {"full": 1}
    assert s.append_many([]) == []
    with pytest.raises(ValueError):
        s.append_many([{"kind": "process"}])
    s.close()


def test_folding_at_the_cap_is_incremental_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    s = Spool(path, max_events=40)
    for i in range(40):  # 4 programs x 10 starts each, rule "a": repeats of 4 fold keys
        s.append(violation(rule="a", exe=f"/bin/p{i % 4}", pid=i))
    s.close()
    s = Spool(path, max_events=40)  # the candidates are found again after a restart
    assert s.append(violation(rule="b"))
    st = s.stats()
    # one group folded (9 rows into its first), not all four: just enough room was made
    assert st.dropped == {"folded": 9}
    assert st.depth == 32
    counts = sorted(r.count for r in s.pending(100))
    assert counts == [1] * 31 + [10]
    s.close()


def test_append_after_close_returns_false_instead_of_raising(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool.db")
    s.close()
    assert s.append(violation()) is False
    s.close()  # twice is fine


def test_the_spool_and_its_wal_are_readable_by_the_agent_only(tmp_path: Path) -> None:
    """Events hold command lines and user names (issue: spool.db was created 0644)."""
    import stat

    spool = Spool(tmp_path / "spool.db")
    try:
        spool.append(new_event("process", rule="r", action="reported"))
        for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        spool.close()
