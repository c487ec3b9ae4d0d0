"""Finding the event(s) a collector cannot take, so that the events behind them still go.

A collector that answers a whole batch with a client error (4xx other than 401, 408, 413 and
429) or a server error (500 and other 5xx, but not 502/503/504, which say the collector is
unreachable or busy) may be choking on one event in it. Resending the same batch forever would
block every event behind that one, so the reporter searches:

1. a 4xx starts the search at once (the same request gets the same answer); a 5xx only after
   ``repeats`` consecutive failures of the same batch (with backoff between them), since it
   may be a passing fault;
2. the failing batch is halved: the first half is sent alone. If it is stored, the poison is
   in the second half, which is halved in turn; if it fails, the poison is in the first half.
   Every event stored on the way is acknowledged as usual;
3. a single event that fails alone becomes a *suspect*. It is dead-lettered only on evidence
   that the collector is otherwise healthy: another events request succeeded *after* the
   suspect failed, and the suspect, sent alone once more after that success, fails again (a
   collector that was failing for everything and has recovered takes it then). Until another
   request succeeds, the next pending event is sent alone as a probe. When nothing
   else is pending there is nothing to prove with: the suspects are parked (left out of
   batches, retried alone every ``retry_interval`` seconds in case the fault was passing) and
   the reporter idles without backing off, so heartbeats go on; the next event to arrive is
   the probe;
4. when ``max_suspects`` events have failed alone and nothing succeeded, the collector itself
   is failing: the search is abandoned, nothing is dead-lettered, and the reporter backs off
   and starts over later. A transport error, a 401, 429 or 503 abandons it too.

Dead letters stay in the spool (state ``dead``, with the reason): nothing is deleted, and
nothing is sent twice except what a lost acknowledgement always resends (the collector stores
an event id once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from proscribe.agent.spool import Spool, SpooledEvent

__all__ = ["FaultKind", "Isolation", "Step", "fault_kind"]

FaultKind = Literal["client", "server"]

# Answers that say nothing about the batch: auth, timeout, too large (halved elsewhere), busy,
# and a gateway that cannot reach the collector.
_NOT_THE_BATCH = frozenset({401, 408, 413, 429, 502, 503, 504})


def fault_kind(status: int) -> FaultKind | None:
    """Whether an answer to an events batch may be caused by an event in it, and how surely."""
    if status in _NOT_THE_BATCH:
        return None
    if 400 <= status < 500:
        return "client"
    if 500 <= status < 600:
        return "server"
    return None


@dataclass(frozen=True, slots=True)
class Step:
    """What the reporter does after a batch fault."""

    retry_now: bool  # True: send the next (smaller) batch at once
    backoff: bool = True  # when not retrying now: back off (False: just idle, heartbeats go on)
    dead: dict[str, str] = field(default_factory=dict)  # event id -> reason, to dead-letter
    note: str = ""


@dataclass
class Isolation:
    """The search state; one per reporter, used from the reporter's thread only."""

    repeats: int = 3
    max_suspects: int = 3
    retry_interval: float = 60.0
    clock: Callable[[], float] = time.monotonic
    active: bool = False
    window: int = 0  # how many events (after the suspects) the next batch holds
    remaining: int = 0  # the first `remaining` of them hold a poison event
    confirm: bool = False  # a request was stored after the suspects failed: resend each alone
    suspects: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (size, reason)
    _streak_key: tuple[str, int] | None = None
    _streak: int = 0
    _retry_at: float = 0.0

    def describe(self) -> str | None:
        """One line for ``agent status`` while a search runs."""
        if not self.active:
            return None
        if self.parked:
            return (
                f"{len(self.suspects)} event(s) the collector refuses alone are held back until "
                "another event is stored (to tell a bad event from a collector fault)"
            )
        return (
            f"isolating an event the collector refuses: {self.remaining} event(s) in question, "
            f"{len(self.suspects)} failed alone"
        )

    @property
    def parked(self) -> bool:
        return self.active and self.remaining == 0 and bool(self.suspects)

    def batch(self, spool: Spool, limit: int, max_bytes: int) -> list[SpooledEvent]:
        """The next batch: the usual oldest rows, or during a search the next window of them
        with the suspects left out."""
        if not self.active:
            return spool.pending(limit=limit, max_bytes=max_bytes)
        held = sum(size for size, _ in self.suspects.values())
        rows = spool.pending(limit=self.window + len(self.suspects), max_bytes=max_bytes + held)
        if self.confirm:  # the suspects' second chance, alone, after a success
            again = [row for row in rows if row.id in self.suspects][:1]
            if again:
                return again
            self.confirm = False  # no longer pending (acknowledged some other way)
            self.suspects = {}
        batch = [row for row in rows if row.id not in self.suspects][: self.window]
        if batch or not self.parked or self.clock() < self._retry_at:
            return batch
        # Nothing to prove with: now and then, try the oldest suspect alone again.
        self._retry_at = self.clock() + self.retry_interval
        return [row for row in rows if row.id in self.suspects][:1]

    def on_fault(self, batch: list[SpooledEvent], reason: str, kind: FaultKind) -> Step:
        if not self.active:
            key = (batch[0].id, len(batch))
            self._streak = self._streak + 1 if key == self._streak_key else 1
            self._streak_key = key
            if kind == "server" and self._streak < self.repeats:
                return Step(retry_now=False)
            self.active, self.suspects, self.confirm = True, {}, False
        if batch[0].id in self.suspects:
            if self.confirm:  # failed alone again although another request was stored since
                return self._dead_one(batch[0].id, reason)
            # a parked suspect, retried: still failing
            return Step(retry_now=False, backoff=False, note=f"{reason}; still held back")
        if len(batch) > 1:
            self.remaining = len(batch)
            self.window = len(batch) // 2
            return Step(retry_now=True, note=f"{reason}; trying the first {self.window}")
        self.suspects[batch[0].id] = (batch[0].size, reason)
        self.remaining = 0
        if len(self.suspects) >= self.max_suspects:  # no success since they failed
            self.reset()
            return Step(retry_now=False, note=f"{reason} for every event alone: collector fault")
        self.window = 1  # probe: is it this event, or the collector?
        self._retry_at = self.clock() + self.retry_interval
        return Step(retry_now=True, note=f"{reason}; probing with the next event alone")

    def on_success(self, batch: list[SpooledEvent]) -> Step:
        """The batch was stored (per-event results settled by the reporter)."""
        self._streak_key, self._streak = None, 0
        if not self.active:
            return Step(retry_now=True)
        retried = [row.id for row in batch if row.id in self.suspects]
        for event_id in retried:  # a parked suspect went through: the fault had passed
            del self.suspects[event_id]
        self.remaining -= len(batch) - len(retried)
        if self.suspects:  # something else was stored: each suspect gets one more try alone
            self.confirm = True
            return Step(retry_now=True, note="other events were stored meanwhile")
        self.confirm = False
        if self.remaining <= 0:
            self.reset()
        else:
            self.window = max(1, self.remaining // 2)
        return Step(retry_now=True)

    def _dead_one(self, event_id: str, reason: str) -> Step:
        first = self.suspects.pop(event_id)[1]
        dead = {
            event_id: f"poison: {first} when sent alone, and again after other events were stored"
        }
        if not self.suspects:
            self.confirm = False
            if self.remaining <= 0:
                self.reset()
            else:
                self.window = max(1, self.remaining // 2)
        return Step(retry_now=True, dead=dead, note=f"{reason}; event {event_id} fails alone")

    def reset(self) -> None:
        """Abandon the search: nothing is dead-lettered, the suspects go back into batches."""
        self.active, self.window, self.remaining = False, 0, 0
        self.suspects, self.confirm = {}, False
