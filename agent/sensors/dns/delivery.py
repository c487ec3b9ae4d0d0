"""Hand observations from a sensor's hot path to the consumer callback without blocking it.

A bounded buffer drained by one consumer thread every ``interval`` seconds. ``submit`` never
waits and returns ``False`` when the buffer is full (the drop is counted). It deliberately does
not wake the consumer: a ``queue.Queue`` notify per item hands the GIL to the consumer on
every packet, which costs the capture thread about a millisecond each time, long enough for a
short-lived client to close its socket before it is attributed. An exception in the callback
is logged and counted, and delivery goes on.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from proscribe.agent.sensors.dns.observation import DnsObservation

log = logging.getLogger(__name__)

ObservationSink = Callable[[DnsObservation], None]


class ObservationDelivery:
    def __init__(
        self,
        sink: ObservationSink,
        maxsize: int = 10_000,
        name: str = "dns",
        interval: float = 0.02,
    ) -> None:
        self._sink = sink
        self._buffer: deque[DnsObservation] = deque()
        self._maxsize = maxsize
        self._name = name
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.delivered = 0
        self.callback_errors = 0

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-deliver", daemon=True)
        self._thread.start()

    def submit(self, observation: DnsObservation) -> bool:
        if len(self._buffer) >= self._maxsize:
            self.dropped += 1
            return False
        self._buffer.append(observation)  # deque.append is atomic under the GIL
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what is buffered (up to ``timeout``), then stop the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout)
        self._thread = None

    def depth(self) -> int:
        return len(self._buffer)

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(self._interval)
            while self._buffer:
                observation = self._buffer.popleft()
                try:
                    self._sink(observation)
                    self.delivered += 1
                except Exception:
                    log.exception("%s observation callback failed", self._name)
                    self.callback_errors += 1
            if stopping:
                return
