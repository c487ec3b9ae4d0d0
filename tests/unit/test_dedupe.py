"""One event per (rule, process); repeats of a rule+exe inside the window fold into a count."""

from __future__ import annotations

from proscribe.agent.dedupe import Deduper
from tests.support.clock import ManualClock


def test_same_process_is_a_duplicate_and_pid_reuse_is_not() -> None:
    d = Deduper(60, ManualClock(0.0))
    assert d.judge("r", 100, 1.0, "/x").kind == "new"
    d.recorded("r", "/x", "e1")
    assert d.judge("r", 100, 1.0, "/x").kind == "duplicate"
    # another rule for the same process is its own event
    assert d.judge("other", 100, 1.0, "/x").kind == "new"
    # the pid reused by a new process (other start time): a repeat of the series, not a dup
    assert d.judge("r", 100, 2.0, "/x").kind == "repeat"


def test_repeats_fold_within_the_window_and_restart_after_it() -> None:
    clock = ManualClock(0.0)
    d = Deduper(60, clock)
    assert d.judge("r", 1, 1.0, "/x").kind == "new"
    d.recorded("r", "/x", "e1")
    clock.now = 30
    v = d.judge("r", 2, 2.0, "/x")
    assert (v.kind, v.event_id, v.count) == ("repeat", "e1", 2)
    clock.now = 50
    assert d.judge("r", 3, 3.0, "/x").count == 3
    clock.now = 200  # window passed since the last repeat
    assert d.judge("r", 4, 4.0, "/x").kind == "new"
    # another executable is another series
    assert d.judge("r", 5, 5.0, "/y").kind == "new"


def test_memory_is_bounded() -> None:
    d = Deduper(60, ManualClock(0.0), capacity=10)
    for pid in range(100):
        d.judge("r", pid, float(pid), f"/bin/{pid}")
        d.recorded("r", f"/bin/{pid}", str(pid))
    assert len(d._processes) <= 10 and len(d._series) <= 10


def test_forget_lets_a_failed_record_retry() -> None:
    d = Deduper(60, ManualClock(0.0))
    d.judge("r", 1, 1.0, "/x")
    d.forget_process("r", 1, 1.0)
    assert d.judge("r", 1, 1.0, "/x").kind == "new"
