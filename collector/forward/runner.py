"""One background thread per ``[[forward]]`` table, in the collector process.

Each round: hold the lease (else wait: another replica forwards this destination), read the
next batch after the cursor, render each event (one that cannot be rendered is dead-lettered),
send, and move the cursor only once the destination acknowledged. A destination that is down
is retried with exponential backoff (1 s doubling up to ``retry_max``, or its Retry-After);
requests never go out faster than ``rate`` per second. A refused batch is retried one event
at a time so the one event the destination refuses is dead-lettered and the rest go through.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from proscribe.collector.forward.base import Destination, Refused, Unavailable, redact_url
from proscribe.collector.forward.render import RenderError, parse_body
from proscribe.collector.forward.settings import ForwardSettings
from proscribe.collector.forward.store import EventRow, ForwardStore
from proscribe.collector.storage import Database, to_us
from proscribe.core.events import SEVERITIES

log = logging.getLogger(__name__)

POLL_S = 0.25  # idle: a read per round (the lease is renewed at half its time)
FIRST_RETRY_S = 1.0


def make_destination(settings: ForwardSettings) -> Destination:
    if settings.kind == "syslog":
        from proscribe.collector.forward.syslog import SyslogDestination

        return SyslogDestination(settings)
    if settings.kind == "webhook":
        from proscribe.collector.forward.webhook import WebhookDestination

        return WebhookDestination(settings)
    from proscribe.collector.forward.splunk import SplunkHecDestination

    return SplunkHecDestination(settings)


def replica_id() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Forwarder:
    """One destination's loop. ``run_round`` does one round and says how long to wait."""

    def __init__(
        self,
        db: Database,
        settings: ForwardSettings,
        *,
        owner: str,
        clock: Callable[[], float],
        destination: Destination | None = None,
        wait: Callable[[float], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = ForwardStore(db, settings.name, owner, settings.lease)
        self.clock = clock
        self.destination = destination or make_destination(settings)
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._retry = 0.0
        self._next_send = 0.0
        self._ready = False
        self.thread: threading.Thread | None = None

    # --- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self._loop, name=f"forward-{self.settings.name}", daemon=True
        )
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self.destination.close()
        try:
            self.store.release()
        except Exception:  # the database may be gone at shutdown; the lease then expires
            log.debug("forwarder %s: lease not released", self.settings.name, exc_info=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.run_round()
            except Exception as err:  # the database away: keep trying, never die
                log.warning("forwarder %s: %s", self.settings.name, err)
                delay = self._backoff(None)
            if delay > 0:
                self._stop.wait(delay)

    def run_round(self) -> float:
        """One round; returns the seconds to wait before the next one (0: go on now)."""
        now = self.clock()
        now_us = to_us(now)
        if not self._ready:
            self.store.ensure(now_us, self.settings.start)
            self._ready = True
        if not self.store.acquire(now_us):
            return self.settings.lease / 3
        cursor = self.store.cursor()
        # gaps settle in real time (transactions in flight end), whatever the app's clock
        batch = self.store.next_batch(cursor, self.settings.batch_size, time.monotonic())
        if not batch:
            return POLL_S
        to_send: list[tuple[EventRow, Any]] = []
        dead: list[tuple[EventRow, str]] = []
        skipped = 0
        for row in batch:
            if _rank(row.severity) < self.settings.min_rank:
                skipped += 1
                continue
            try:
                to_send.append((row, self.destination.render(parse_body(row.body))))
            except RenderError as err:
                dead.append((row, f"cannot render: {err}"))
            except Exception as err:  # a shape no check foresaw: still this event's alone
                dead.append((row, f"cannot render: {type(err).__name__}: {err}"))
        try:
            sent = self._deliver(to_send, dead)
        except Unavailable as err:
            self.store.record_error(str(err), to_us(self.clock()))
            return self._backoff(err.retry_after)
        self._retry = 0.0
        for row, reason in dead:
            log.warning(
                "forwarder %s: event %s dead-lettered: %s", self.settings.name, row.event_id, reason
            )
        moved = self.store.advance(
            batch[-1].seq, sent=sent, skipped=skipped, dead=dead, now_us=to_us(self.clock())
        )
        if not moved:
            return self.settings.lease / 3
        return 0.0 if len(batch) == self.settings.batch_size else POLL_S

    def _deliver(
        self, to_send: list[tuple[EventRow, Any]], dead: list[tuple[EventRow, str]]
    ) -> int:
        """Send; on a refusal, one at a time. Returns how many were acknowledged."""
        if not to_send:
            return 0
        try:
            self._send([item for _, item in to_send])
            return len(to_send)
        except Refused as err:
            if len(to_send) == 1:
                dead.append((to_send[0][0], f"refused: {err}"))
                return 0
        sent = 0
        for row, item in to_send:
            try:
                self._send([item])
                sent += 1
            except Refused as err:
                dead.append((row, f"refused: {err}"))
        return sent

    def _send(self, items: list[Any]) -> None:
        """Send, never faster than ``rate`` requests per second (real time: the pacing is for
        the destination, whatever clock the events are stamped with)."""
        gap = self._next_send - time.monotonic()
        if gap > 0:
            self._wait(gap)
        self._next_send = time.monotonic() + 1.0 / self.settings.rate
        try:
            self.destination.send(items)
        except (Unavailable, Refused):
            raise
        except Exception as err:  # content the sender cannot handle: isolate it, never loop
            raise Refused(f"{type(err).__name__}: {err}") from err

    def _backoff(self, retry_after: float | None) -> float:
        self._retry = min(self.settings.retry_max, max(FIRST_RETRY_S, self._retry * 2))
        if retry_after is not None:
            return min(self.settings.retry_max, max(retry_after, 0.0))
        return self._retry * random.uniform(0.8, 1.0)


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


class ForwardRunner:
    """Every configured forwarder of this replica; started and stopped by the app."""

    def __init__(
        self, db: Database, forwards: tuple[ForwardSettings, ...], clock: Callable[[], float]
    ) -> None:
        owner = replica_id()
        self.forwarders = [Forwarder(db, f, owner=owner, clock=clock) for f in forwards]

    def start(self) -> None:
        for forwarder in self.forwarders:
            log.info(
                "forwarding to %s (%s, %s)",
                forwarder.settings.name,
                forwarder.settings.kind,
                redact_url(forwarder.settings.url),
            )
            forwarder.start()

    def stop(self) -> None:
        for forwarder in self.forwarders:
            forwarder.stop()
