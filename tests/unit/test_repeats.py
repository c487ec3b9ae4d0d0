"""The one de-duplication and repeat-fold rule (agent/repeats.py), over a real spool.

Duplicates of one occurrence are dropped; repeats of a series inside the window (counted from the
series' first event) fold into its count, through the spool while that event is unsent and as a
new event once it was sent; every occurrence ends up in exactly one event's count.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proscribe.agent.counters import Counters
from proscribe.agent.evidence import Evidence, HostSection
from proscribe.agent.repeats import RepeatFolder
from proscribe.agent.spool import Spool
from proscribe.core.events import Event, new_event
from tests.support.agent_harness import spool_events
from tests.support.clock import ManualClock


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool.db")
    yield s
    s.close()


def folder(spool: Spool, clock: ManualClock, window: float = 60, **kw: Any) -> RepeatFolder:
    evidence = Evidence(spool, HostSection("h"))
    return RepeatFolder(evidence, window, counts=Counters(), clock=clock, **kw)


def event(pid: int, detail: str = "seen") -> Event:
    return new_event(
        "process", rule="r", action="killed", process={"pid": pid, "exe": "/x"}, detail=detail
    )


def rows(spool: Spool) -> list[dict[str, Any]]:
    """The unsent events with their counts, read beside the spool (not taken for sending)."""
    return [e for e in spool_events(spool.path.parent) if e["_state"] == "pending"]


def test_the_same_process_is_a_duplicate_and_a_reused_pid_is_a_repeat(spool: Spool) -> None:
    f = folder(spool, ManualClock(0.0))
    assert f.record(("r", "/x"), lambda: event(100), occurrence=("r", 100, 1.0)).kind == "first"
    seen_again = f.record(("r", "/x"), lambda: event(100), occurrence=("r", 100, 1.0))
    assert seen_again.kind == "duplicate" and seen_again.event is None
    # another rule for the same process is its own event
    assert f.record(("o", "/x"), lambda: event(100), occurrence=("o", 100, 1.0)).kind == "first"
    # the pid reused by a new process (another start time): a repeat of the series
    assert f.record(("r", "/x"), lambda: event(100), occurrence=("r", 100, 2.0)).kind == "repeat"
    f.flush()
    assert [e["_count"] for e in rows(spool)] == [2, 1]


def test_repeats_fold_within_the_window_from_the_first_event(spool: Spool) -> None:
    clock = ManualClock(0.0)
    f = folder(spool, clock)
    assert f.record("s", lambda: event(1)).kind == "first"
    clock.now = 30
    assert f.record("s", lambda: event(2)).kind == "repeat"
    clock.now = 59.9
    assert f.record("s", lambda: event(3)).kind == "repeat"
    clock.now = 60  # the window is counted from the first event, not the last repeat
    assert f.record("s", lambda: event(4)).kind == "first"
    assert f.record("other", lambda: event(5)).kind == "first"  # another series
    f.flush()
    assert [e["_count"] for e in rows(spool)] == [3, 1, 1]
    assert f.counts["folded"] == 2


def test_repeats_are_written_at_the_flush_interval_not_per_repeat(spool: Spool) -> None:
    clock = ManualClock(0.0)
    f = folder(spool, clock, flush_interval=0.5)
    f.record("s", lambda: event(1))
    for pid in range(2, 7):
        f.record("s", lambda pid=pid: event(pid))  # type: ignore[misc]
    assert rows(spool)[0].get("count", 1) == 1  # counted in memory, not yet written
    clock.now = 0.6
    f.record("s", lambda: event(7))  # the next repeat past the interval writes them all
    assert rows(spool)[0]["_count"] == 7


def test_repeats_after_the_event_was_sent_travel_in_a_new_event(spool: Spool) -> None:
    clock = ManualClock(0.0)
    f = folder(spool, clock)
    f.record("s", lambda: event(1))
    spool.ack([row.id for row in spool.pending()])  # the reporter delivered it
    for pid in range(2, 9):
        f.record("s", lambda pid=pid: event(pid, "latest"))  # type: ignore[misc]
    assert rows(spool) == []  # never one event per repeat
    assert f.flush() == 1
    (carrier,) = rows(spool)
    assert carrier["_count"] == 7 and carrier["process"]["pid"] == 8
    assert carrier["detail"] == "latest (7 repeat(s) after the first report)"
    # the window's later repeats fold into the new event while it is unsent
    clock.now = 10
    f.record("s", lambda: event(9))
    f.flush()
    assert [e["_count"] for e in rows(spool)] == [8]
    assert f.counts["repeat_events"] == 1
    assert f.flush() == 0  # nothing twice


class FullOnce:
    """A spool that refuses its first append (full, evicting nothing), then accepts."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.refused = False

    def append(self, event: Event) -> bool:
        if not self.refused:
            self.refused = True
            return False
        return self.spool.append(event)

    def bump_count(self, event_id: str, n: int = 1) -> bool:
        return self.spool.bump_count(event_id, n)


def test_a_first_event_that_could_not_be_stored_is_retried(spool: Spool) -> None:
    evidence = Evidence(FullOnce(spool), HostSection("h"))
    f = RepeatFolder(evidence, 60, counts=Counters(), clock=ManualClock(0.0))
    first = f.record("s", lambda: event(1))
    assert first.kind == "first" and not first.stored
    # no series was opened on a lost event: the next occurrence is a first again, and stored
    again = f.record("s", lambda: event(2))
    assert again.kind == "first" and again.stored
    assert [e["process"]["pid"] for e in rows(spool)] == [2]


def test_window_zero_makes_every_occurrence_its_own_event(spool: Spool) -> None:
    f = folder(spool, ManualClock(0.0), window=0)
    assert [f.record("s", lambda: event(1)).kind for _ in range(3)] == ["first"] * 3
    assert len(rows(spool)) == 3


def test_memory_is_bounded(spool: Spool) -> None:
    f = folder(spool, ManualClock(0.0), capacity=10)
    for pid in range(100):
        f.record(("r", pid), lambda pid=pid: event(pid), occurrence=pid)  # type: ignore[misc]
    assert len(f._occurrences) <= 10 and len(f._series) <= 10
