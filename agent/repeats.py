"""The agent's one de-duplication and repeat-fold rule, for process and DNS events alike.

A guard hands every matched *occurrence* (a process start a rule matched, an exec the pre-exec
guard refused, a DNS question about a denied name) to :meth:`RepeatFolder.record` with two keys
it chooses:

* ``occurrence`` — what makes two sightings *the same* occurrence: ``(rule, action, pid, start
  time)`` for a process, so a long-running process seen again (a sweep, a comm change, a re-check
  after a policy reload) is a **duplicate**: dropped, not counted. ``None`` when every sighting
  is its own occurrence (each DNS question, each refused exec).
* ``series`` — what makes occurrences *repeats* of one another: ``(rule, action, executable)``
  for process events, ``(rule, action, process, name)`` for DNS. The key is the caller's, so a
  guard can fold by other facts (by user too, or per process with a sample of names) without
  touching this rule.

The rule: the first occurrence of a series is committed to the spool as its own event — before
anything is done about it — and opens a **window** of ``window`` seconds. Every later occurrence
of the series inside the window is a **repeat**: counted in memory (no spool write per repeat,
so a storm cannot starve the thread that records it) and folded into the series' event every
``flush_interval`` seconds and at shutdown: ``Spool.bump_count`` while that event is unsent;
once the reporter has sent it, a new event — the latest repeat's own, with ``count`` = the
repeats it carries and a detail saying so — takes them, and the window's later repeats fold into
that one. The first occurrence after the window closes opens a new series event. Nothing is
lost: every occurrence is in exactly one event's ``count``.

Time is injected (``clock``, monotonic seconds). Memory is bounded by ``capacity`` keys of each
kind (oldest forgotten first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from proscribe.agent.counters import Counters
from proscribe.core.events import Event

__all__ = ["EventSink", "Recorded", "RepeatFolder"]

log = logging.getLogger(__name__)

V = TypeVar("V")


class EventSink(Protocol):
    """Where events are committed (:class:`~proscribe.agent.evidence.Evidence`, or a spool)."""

    def commit(self, event: Event) -> bool: ...

    def bump(self, event_id: str, n: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Recorded:
    """What :meth:`RepeatFolder.record` did with one occurrence."""

    kind: Literal["first", "repeat", "duplicate"]
    event: Event | None = None  # the occurrence's event (None for a duplicate)
    stored: bool = False  # first: committed to the spool; repeat: counted


@dataclass(slots=True)
class _Series:
    event_id: str  # the event repeats fold into now
    opened: float  # when the window opened (clock seconds)


@dataclass(slots=True)
class _Pending:
    repeats: int
    latest: Event  # the newest repeat's event: carries the count if the series' event was sent
    series: Hashable


class RepeatFolder:
    def __init__(
        self,
        sink: EventSink,
        window: float,
        *,
        counts: Counters,
        clock: Callable[[], float] = time.monotonic,
        flush_interval: float = 0.5,
        capacity: int = 50_000,
    ) -> None:
        self.sink = sink
        self.window = window
        self.counts = counts  # "folded", "repeat_events", "unspooled" go to the guard's counts
        self.clock = clock
        self.flush_interval = flush_interval
        self.capacity = capacity
        self._occurrences: OrderedDict[Hashable, None] = OrderedDict()
        self._series: OrderedDict[Hashable, _Series] = OrderedDict()
        self._pending: dict[str, _Pending] = {}  # series event id -> repeats not yet written
        self._last_flush = clock()
        self._lock = threading.Lock()

    def record(
        self, series: Hashable, build: Callable[[], Event], *, occurrence: Hashable | None = None
    ) -> Recorded:
        """Classify one occurrence and commit or count it (``build`` makes its event)."""
        with self._lock:
            if occurrence is not None:
                if occurrence in self._occurrences:
                    self._occurrences.move_to_end(occurrence)
                    return Recorded("duplicate")
                self._occurrences[occurrence] = None
                _bound(self._occurrences, self.capacity)
            open_series = self._series.get(series)
            now = self.clock()
            if open_series is not None and now - open_series.opened >= self.window:
                del self._series[series]
                open_series = None
        event = build()
        if open_series is not None:
            with self._lock:
                pending = self._pending.get(open_series.event_id)
                if pending is None:
                    self._pending[open_series.event_id] = _Pending(1, event, series)
                else:
                    pending.repeats += 1
                    pending.latest = event
            self.counts.add("folded")
            self.flush(force=False)
            return Recorded("repeat", event, stored=True)
        stored = self._commit(event)
        if stored:
            with self._lock:
                self._series[series] = _Series(event["id"], now)
                self._series.move_to_end(series)
                _bound(self._series, self.capacity)
        return Recorded("first", event, stored)

    def flush(self, *, force: bool = True) -> int:
        """Fold counted repeats into their events; returns how many events took repeats.
        Without ``force`` it does nothing until ``flush_interval`` has passed since the last."""
        now = self.clock()
        with self._lock:
            if not self._pending or (not force and now - self._last_flush < self.flush_interval):
                return 0
            pending, self._pending = self._pending, {}
            self._last_flush = now
        for event_id, item in pending.items():
            if self._bump(event_id, item.repeats):
                continue
            # the series' event was already sent: these repeats travel in a new one
            event = dict(item.latest, count=item.repeats)
            event["detail"] = (
                f"{event.get('detail', '')} ({item.repeats} repeat(s) after the first report)"
            ).strip()
            if self._commit(event):
                self.counts.add("repeat_events")
                with self._lock:
                    current = self._series.get(item.series)
                    if current is not None and current.event_id == event_id:
                        current.event_id = event["id"]
            else:
                self.counts.add("unspooled")
        return len(pending)

    def _commit(self, event: Event) -> bool:
        try:
            return self.sink.commit(event)
        except Exception:
            log.exception("committing an event failed")
            return False

    def _bump(self, event_id: str, n: int) -> bool:
        try:
            return self.sink.bump(event_id, n)
        except Exception:
            log.exception("folding repeats into event %s failed", event_id)
            return False


def _bound(items: OrderedDict[Hashable, V], capacity: int) -> None:
    while len(items) > capacity:
        items.popitem(last=False)
