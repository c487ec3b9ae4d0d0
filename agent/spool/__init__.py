"""The durable event spool: SQLite, committed before anything else happens to an event.

Guarantees
----------
- ``Spool.append(event)`` returns only after the row is committed in a SQLite file opened with
  ``journal_mode=WAL`` and ``synchronous=FULL``: the event survives ``kill -9`` of the agent at
  any point, and power loss after ``append`` returned. The event id is the primary key;
  appending the same id again is a no-op (and returns True).
- Rows leave delivery only when acknowledged: ``ack(ids)`` (the collector answered ``stored`` or
  ``duplicate``) or ``dead_letter(ids, reason)`` (it refused them for good). Acknowledged and
  dead-lettered rows are kept as local history for ``proscribe agent events``, the newest
  ``history_limit`` (default 1000) of each, and are the first thing evicted when space is needed.
- Thread-safe: one connection guarded by a lock; sensors append from their threads while the
  reporter reads and acknowledges from its own.

Caps and eviction order
-----------------------
The spool holds at most ``max_events`` rows (default 100,000) and ``max_bytes`` of event JSON
(default 50 MiB). When an append would exceed either cap, space is made in this order, stopping
as soon as the new event fits:

0. delivered history and dead letters, oldest first (nothing undelivered is lost; not counted);
1. pending ``health``/heartbeat events, oldest first (``dropped["evicted_health"]``);
2. repeats folded into counts: pending events with the same kind, rule, action and thing seen
   (process executable/name + user + hash; DNS query name; file path) are merged into the oldest
   one's ``count`` (``dropped["folded"]`` counts the rows merged; the occurrences are kept);
3. the oldest pending violations, except the first pending event of each rule, which is always
   kept (``dropped["evicted_oldest"]``).

If the event still does not fit (every row is the first of its rule), it is refused
(``dropped["full"]``); an event bigger than a batch may be is refused (``dropped["too_large"]``);
a failed disk write is ``dropped["write_error"]``. Rows the reporter is sending right now are never
folded or evicted under it. All drop counters are persisted and reported in ``stats()`` (and by
the reporter in every heartbeat).

Corruption
----------
A file that is not a database, or fails ``PRAGMA integrity_check``, is moved aside to
``spool.db.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``) and a fresh spool is created;
this is logged at ERROR and shown as ``stats().corrupt_moved_to`` (this run) and
``stats().corrupt_replaced`` (persisted count). The unsent events still readable in the moved
file are then copied into the fresh spool (read-only, walked by rowid so a damaged page costs
only its rows; ``stats().corrupt_salvaged``). A busy or unreadable file is never moved: that
raises ``SpoolError``.
"""

from ._records import SpooledEvent, SpoolStats
from ._spool import Spool

__all__ = ["Spool", "SpoolStats", "SpooledEvent"]
