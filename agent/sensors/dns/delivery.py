"""Hand observations from a sensor's hot path to the consumer callback without blocking it.

A bounded queue and one consumer thread: ``submit`` never waits and returns ``False`` when the
queue is full (the drop is counted); an exception in the callback is logged and counted, and
delivery goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from proscribe.agent.sensors.dns.observation import DnsObservation

log = logging.getLogger(__name__)

ObservationSink = Callable[[DnsObservation], None]
_STOP = object()


class ObservationDelivery:
    def __init__(self, sink: ObservationSink, maxsize: int = 10_000, name: str = "dns") -> None:
        self._sink = sink
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._name = name
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.delivered = 0
        self.callback_errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-deliver", daemon=True)
        self._thread.start()

    def submit(self, observation: DnsObservation) -> bool:
        try:
            self._queue.put_nowait(observation)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("%s delivery queue still full at stop; dropping the rest", self._name)
        self._thread.join(timeout)
        self._thread = None

    def depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._sink(item)
                self.delivered += 1
            except Exception:
                log.exception("%s observation callback failed", self._name)
                self.callback_errors += 1
