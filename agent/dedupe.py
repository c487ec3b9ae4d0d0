"""De-duplication of violations, so a denied program cannot flood the spool.

Two layers:

* **one event per (rule, process)** — a process is identified by (pid, start time), so a
  long-running denied process that is seen again (a sweep, a comm change, a re-check after a
  policy reload) produces no new event, while a new process that reuses the pid does;
* **repeats fold into a count** — a new process of the same rule and executable within
  ``window`` seconds of the last event for that pair is folded into that event: the caller bumps
  the count of the spooled event when it is still unsent (``Spool.bump_count``) or, when it was
  already sent, writes a new event carrying the running count.

Time is injected (``clock``, monotonic seconds). Memory is bounded by ``capacity`` per layer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Deduper", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Literal["new", "duplicate", "repeat"]
    event_id: str | None = None  # for "repeat": the event to fold into
    count: int = 1  # for "repeat": occurrences including this one


@dataclass(slots=True)
class _Series:
    event_id: str
    last: float
    count: int


class Deduper:
    def __init__(
        self, window: float, clock: Callable[[], float], *, capacity: int = 50_000
    ) -> None:
        self.window = window
        self.clock = clock
        self.capacity = capacity
        self._processes: OrderedDict[tuple[str, int, float | None], None] = OrderedDict()
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()
        self._lock = threading.Lock()
        self.folded = 0
        self.duplicates = 0

    def judge(self, rule: str, pid: int, start_time: float | None, exe: str) -> Verdict:
        """Classify one sighting; a "new" verdict must be followed by :meth:`recorded`."""
        with self._lock:
            key = (rule, pid, start_time)
            if key in self._processes:
                self._processes.move_to_end(key)
                self.duplicates += 1
                return Verdict("duplicate")
            self._processes[key] = None
            while len(self._processes) > self.capacity:
                self._processes.popitem(last=False)
            series = self._series.get((rule, exe))
            now = self.clock()
            if exe and series is not None and now - series.last <= self.window:
                series.count += 1
                series.last = now
                self.folded += 1
                return Verdict("repeat", series.event_id, series.count)
            return Verdict("new")

    def recorded(self, rule: str, exe: str, event_id: str, count: int = 1) -> None:
        """Remember the event that later repeats of (rule, exe) fold into."""
        with self._lock:
            self._series[(rule, exe)] = _Series(event_id, self.clock(), count)
            self._series.move_to_end((rule, exe))
            while len(self._series) > self.capacity:
                self._series.popitem(last=False)

    def forget_process(self, rule: str, pid: int, start_time: float | None) -> None:
        """Undo a judgement (e.g. the event could not be stored) so a later sighting retries."""
        with self._lock:
            self._processes.pop((rule, pid, start_time), None)
