"""One event per (rule, process, name) within a window; repeats inside it are counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Seen:
    first: float
    repeats: int
    token: object  # what the caller stored for the first one (e.g. its event id)


class DnsDeduper:
    """``offer(key, now)`` says whether this is the first in its window.

    The key is whatever identifies "the same thing": the adapter uses
    ``(rule_id, process pid/exe, name)``. ``offer`` returns ``(True, None)`` for a first
    sighting (report it) and ``(False, token)`` for a repeat, with the token the caller
    registered for the first one via :meth:`remember`, so the repeat can be folded into it.
    """

    def __init__(
        self,
        window: float = 60.0,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._seen: dict[Hashable, _Seen] = {}
        self._lock = threading.Lock()
        self.suppressed = 0

    def offer(self, key: Hashable) -> tuple[bool, object]:
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.first < self._window:
                seen.repeats += 1
                self.suppressed += 1
                return False, seen.token
            if len(self._seen) >= self._max_keys:
                self._expire(now)
            self._seen[key] = _Seen(now, 0, None)
            return True, None

    def remember(self, key: Hashable, token: object) -> None:
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                seen.token = token

    def repeats(self, key: Hashable) -> int:
        with self._lock:
            seen = self._seen.get(key)
            return seen.repeats if seen is not None else 0

    def _expire(self, now: float) -> None:
        stale = [k for k, v in self._seen.items() if now - v.first >= self._window]
        for key in stale:
            del self._seen[key]
        if len(self._seen) >= self._max_keys:  # all fresh: forget the oldest half
            for key in list(self._seen)[: self._max_keys // 2]:
                del self._seen[key]
