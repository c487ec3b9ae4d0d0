"""A clock that moves only when a test moves it, for code that takes a ``clock`` argument
(a zero-argument callable returning seconds, like ``time.time`` or ``time.monotonic``)."""

from __future__ import annotations

import time


class ManualClock:
    """Frozen at ``start`` (the real time now, unless given) until :meth:`advance`."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
