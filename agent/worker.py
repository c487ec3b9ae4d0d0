"""The one hand-off from a thread that must never wait to a thread that does the work.

:class:`BackgroundWorker` is a bounded queue drained by one consumer thread, in the manner of
sentry-python's ``BackgroundWorker`` (``sentry_sdk/worker.py``): :meth:`~BackgroundWorker.submit`
never blocks and returns whether the item was taken; what is not taken is counted by reason
(``full``: the queue holds ``maxsize`` items; ``stopped``: the worker was stopped — items
submitted before :meth:`~BackgroundWorker.start` wait for it); an
exception in the handler is logged and counted and the next item goes on;
:meth:`~BackgroundWorker.flush` waits until everything taken before it was handled;
:meth:`~BackgroundWorker.stop` handles what was taken for at most ``timeout`` seconds and counts
the rest as dropped (``stopped``), so nothing disappears unaccounted.

Two ways to wake the consumer, chosen per use:

* ``poll_interval=None`` — woken by each item: the least latency (the process sensor's checker:
  exec → event in milliseconds);
* ``poll_interval=0.02`` — the consumer wakes every 20 ms and drains a batch. A wake-up per item
  hands the GIL to the consumer on every submit, which costs a packet-reading thread about a
  millisecond each time (long enough for a short-lived DNS client to close its socket before it
  is attributed); batching keeps the producer running.

The queue is a ``queue.SimpleQueue`` when woken per item (implemented in C: a ``put`` costs a
fraction of ``queue.Queue``'s) and a ``deque`` when drained every tick (an ``append`` is atomic
and wakes nobody). The bound is checked without a lock, so concurrent producers may overshoot it
by one item each.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from proscribe.agent.counters import Counters

__all__ = ["BackgroundWorker"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Control:
    """A marker the consumer reaches after every item taken before it."""

    __slots__ = ("done", "stop")

    def __init__(self, *, stop: bool) -> None:
        self.stop = stop
        self.done = threading.Event()


class _Run(Generic[T]):
    """One start-to-stop of the consumer: its queue, and whether what is left is discarded
    (set when :meth:`BackgroundWorker.stop` gave up waiting). A restart gets a new one, so a
    consumer still stuck in the last run's handler never takes the new run's items."""

    __slots__ = ("batch", "discard", "put", "queue", "size")

    def __init__(self, *, batching: bool) -> None:
        self.queue: queue.SimpleQueue[T | _Control] = queue.SimpleQueue()
        self.batch: deque[T | _Control] = deque()
        self.put: Callable[[T | _Control], None] = self.batch.append if batching else self.queue.put
        self.size: Callable[[], int] = self.batch.__len__ if batching else self.queue.qsize
        self.discard = False


_IDLE_WAIT: Final = 0.5  # a wake-per-item consumer still looks at its flags this often


def _refusing() -> int:
    """The queue size a stopped worker shows its producers: always full."""
    return sys.maxsize


class BackgroundWorker(Generic[T]):
    """One consumer thread calling ``handle(item)`` for every item taken, in order."""

    def __init__(
        self,
        handle: Callable[[T], None],
        *,
        name: str,
        maxsize: int,
        poll_interval: float | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self._handle = handle
        self._poll_interval = poll_interval
        self._run: _Run[T] = _Run(batching=poll_interval is not None)
        # What submit() calls, bound once per run: the producers' path is two calls and a
        # compare. After stop() the size reads as full, so a late submit is refused (counted).
        self._size: Callable[[], int] = self._run.size
        self._put: Callable[[T | _Control], None] = self._run.put
        self._wake = threading.Event()  # batching mode: a flush or stop does not wait a tick
        self._thread: threading.Thread | None = None
        self._accepting = True  # until stop(); what comes before start() waits for it
        self.drops = Counters(("full", "stopped"))
        self.counts = Counters(("errors",))  # handler failures (the consumer's only count)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._accepting and self.alive:
            return
        if not self._accepting:
            self._run = _Run(batching=self._poll_interval is not None)  # a fresh start
            self._size, self._put = self._run.size, self._run.put
        self._wake.clear()
        self._thread = threading.Thread(
            target=self._consume, args=(self._run,), name=self.name, daemon=True
        )
        self._accepting = True
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> bool:
        """Handle what was taken (for at most ``timeout`` s) and end the thread; True when all
        of it was handled. Items left when the time is up are counted as dropped (``stopped``)."""
        self._accepting = False
        self._size = _refusing
        thread, run = self._thread, self._run
        if thread is None:
            return True
        marker = _Control(stop=True)
        run.put(marker)
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        if marker.done.is_set() or not thread.is_alive():
            return True
        run.discard = True  # the handler is stuck: the rest is counted when it returns
        log.warning("%s: not drained within %.1f s; the rest is dropped", self.name, timeout)
        return False

    # -- producers ----------------------------------------------------------------------------

    def submit(self, item: T) -> bool:
        """Queue ``item`` without waiting; False (and a counted drop) when it is not taken."""
        if self._size() >= self.maxsize:
            self.drops.add("full" if self._accepting else "stopped")
            return False
        self._put(item)
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every item taken before this call was handled; False on timeout."""
        if not self.alive:
            return self._run.size() == 0
        marker = _Control(stop=False)
        self._run.put(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def depth(self) -> int:
        """Items taken and not yet handled (approximate while producers run)."""
        return self._run.size()

    # -- the consumer -------------------------------------------------------------------------

    def _arrivals(self, run: _Run[T]) -> list[T | _Control]:
        """What is there to handle now, oldest first; waits (a tick, or for one item) if none."""
        if self._poll_interval is None:
            while True:
                try:
                    first = run.queue.get(timeout=_IDLE_WAIT)
                    break
                except queue.Empty:
                    continue
            items = [first]
            try:
                while len(items) < 256:  # what else arrived meanwhile, in one go
                    items.append(run.queue.get_nowait())
            except queue.Empty:
                pass
            return items
        batch = run.batch
        while not batch:
            self._wake.wait(self._poll_interval)
            self._wake.clear()
        # popleft, not a copy: producers append concurrently (each call is atomic)
        return [batch.popleft() for _ in range(len(batch))]

    def _consume(self, run: _Run[T]) -> None:
        # Kept lean: it shares the GIL with the producers, so its cost per item is theirs too.
        handle = self._handle
        while True:
            for item in self._arrivals(run):
                if isinstance(item, _Control):
                    item.done.set()
                    if item.stop:
                        return
                    continue
                if run.discard:
                    self.drops.add("stopped")
                    continue
                try:
                    handle(item)
                except Exception:  # the consumer outlives its handler's bugs
                    self.counts.add("errors")
                    log.exception("%s: handling an item failed (continuing)", self.name)
