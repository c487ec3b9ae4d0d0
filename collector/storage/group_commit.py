"""Group commit: concurrent event batches share one transaction and one fsync.

Every acknowledged event must be durable (the agent deletes it from its spool on the
acknowledgement), so each commit waits for the disk. With many agents posting at once, most of
an ingest request's time was that wait, one batch after another. Here the first request to find
the database free becomes the *leader*: it takes every batch queued meanwhile and commits them
together; the others find their batch done when they get their turn, and answer at once.

The unit of work given to :meth:`GroupCommit.run` must raise only *before* it writes (a replayed
nonce is detected with ``ON CONFLICT DO NOTHING`` and raises without having written): such an
exception is that request's alone, and the group goes on. A database error fails the whole
group, and every request in it answers an error; the agents retry, and the event ids make the
retry exactly-once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from proscribe.collector.storage.database import Database

T = TypeVar("T")

__all__ = ["GroupCommit"]


class _Unit(Generic[T]):
    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    def __init__(self, db: Database, *, max_group: int = 64) -> None:
        self._db = db
        self._max_group = max_group
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()
        self._queue: list[_Unit[object]] = []
        self.groups = 0  # commits made (for tests and metrics)
        self.units = 0  # units committed

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` inside a shared write transaction; return its result once committed."""
        unit: _Unit[T] = _Unit(work)
        with self._queue_lock:
            self._queue.append(unit)  # type: ignore[arg-type]
        while True:
            with self._leader:
                if unit.done:  # committed by a leader before us, or by us just now
                    break
                with self._queue_lock:
                    group = self._queue[: self._max_group]
                    del self._queue[: self._max_group]
                self._commit(group)
        if unit.error is not None:
            raise unit.error
        return unit.result  # type: ignore[return-value]

    def _commit(self, group: list[_Unit[object]]) -> None:
        try:
            with self._db.write() as conn:
                for member in group:
                    try:
                        member.result = member.work(conn)
                    except SQLAlchemyError:
                        raise  # the transaction is suspect: roll the whole group back
                    except Exception as err:  # this member's own refusal; nothing written
                        member.error = err
        except BaseException as err:  # the commit itself failed: nobody's batch is stored
            for member in group:
                if member.error is None:
                    member.error = err
                    member.result = None
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt and the like are not swallowed
        finally:
            self.groups += 1
            self.units += len(group)
            for member in group:
                member.done = True
