"""What exec-deny decides on: the request, the verdict, the verdict cache, the policy decider.

Pure apart from one small reader (``sha256_of_fd``) that takes the file as an argument, so all
of it is unit-tested without fanotify. Who is exec'ing is read by the agent's one procfs reader
(:func:`proscribe.agent.sensors.enrich.read_ids`): the real uid, as everywhere in the agent.

Verdicts are cached by file identity — (dev, inode, mtime, size) as REFERENCE.md §5 asks, plus
ctime, which changes on every write (even one that puts mtime back), rename, link and chmod, so
a file renamed to a denied name is judged again. A verdict that depended on who ran the program
(a rule matched and the policy has a user-scoped exemption for it) is marked ``per_user`` and
is reused only for the same uid. Every entry lives ``ttl`` seconds, because exemptions expire
and a directory rename (which leaves the files' ctime alone) can change what a path glob says.
The common case — a program no rule matches — costs one ``fstat`` and a dict lookup.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from proscribe.core.policy.matchers.compiled import CompiledPolicy, Decision

__all__ = [
    "ALLOW",
    "MAX_HASH_BYTES",
    "CacheKey",
    "Decide",
    "ExecRequest",
    "ExecVerdict",
    "OnDenied",
    "VerdictCache",
    "policy_decider",
    "sha256_of_fd",
]

MAX_HASH_BYTES = 256 * 1024 * 1024  # larger executables are judged without a hash
_HASH_CHUNK = 1024 * 1024


class CacheKey(NamedTuple):
    """A tuple, not a dataclass: built and hashed on every exec."""

    dev: int
    ino: int
    mtime_ns: int
    size: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> CacheKey:
        return cls(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """A program about to run. ``argv`` is not known yet: the kernel asks before exec."""

    pid: int  # the process calling execve (it becomes the new program)
    path: str  # the executable, resolved by the kernel
    uid: int | None  # real uid of the caller (who ran it); None if it exited
    user: str  # the real uid's account: what exemptions by user match
    dev: int
    ino: int
    size: int
    sha256: str | None = None  # only when the policy needs hashes and the file is small enough
    euid: int | None = None  # effective uid of the caller, recorded in the event


@dataclass(frozen=True, slots=True)
class ExecVerdict:
    """Whether one exec is refused, and why."""

    deny: bool
    reason: str = ""  # the explanation shown in logs and events
    rule_id: str | None = None
    decisions: tuple[Decision, ...] = ()
    enforced: bool = True  # False in monitor mode: the exec was allowed anyway
    per_user: bool = False  # another user could get another verdict (a user-scoped exemption)

    @property
    def action(self) -> str:
        """The event action: ``denied`` where the exec failed, ``would_block`` in monitor mode."""
        return "denied" if self.enforced else "would_block"


Decide = Callable[[ExecRequest], ExecVerdict]
OnDenied = Callable[[ExecRequest, ExecVerdict], None]
ALLOW = ExecVerdict(deny=False)


class VerdictCache:
    """LRU of verdicts by :class:`CacheKey`, each valid for ``ttl`` seconds. Thread-safe.

    A ``per_user`` verdict is stored with the uid it was judged for and is a hit only for that
    uid; ``uid_of`` is called only then, so the common case reads nothing about the caller.
    """

    def __init__(
        self, capacity: int = 4096, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.clock = clock
        self._items: OrderedDict[CacheKey, tuple[float, ExecVerdict, int | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey, uid_of: Callable[[], int | None]) -> ExecVerdict | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if self.clock() >= item[0]:
                del self._items[key]
                return None
            self._items.move_to_end(key)
        _expires, verdict, uid = item
        if verdict.per_user and uid_of() != uid:
            return None
        return verdict

    def put(self, key: CacheKey, verdict: ExecVerdict, uid: int | None = None) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = (self.clock() + self.ttl, verdict, uid)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def sha256_of_fd(fd: int, size: int, limit: int = MAX_HASH_BYTES) -> str | None:
    """Hash the file behind ``fd`` with ``pread`` (the fd's offset is left alone)."""
    if size > limit:
        return None
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, _HASH_CHUNK, offset)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        offset += len(chunk)
        if offset > limit:
            return None


def policy_decider(
    compiled: CompiledPolicy,
    host: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Decide:
    """A decider judging the program about to run with ``compiled.check_process``.

    The facts are what is known before exec: the name (the path's basename, cut to comm's 15
    characters), the path, the caller's uid/user and the hash. argv and the command line are not
    known yet, so command-line rules cannot deny here (the process sensor still sees them).
    """
    from proscribe.core.policy.matchers.process import COMM_MAX, ProcessFacts, basename

    user_scoped = {r for e in compiled.policy.exemptions if e.users for r in e.rules}

    def decide(request: ExecRequest) -> ExecVerdict:
        facts = ProcessFacts(
            pid=request.pid,
            name=basename(request.path)[:COMM_MAX],
            exe=request.path,
            user=request.user,
            uid=request.uid,
            euid=request.euid,
            sha256=request.sha256,
        )
        decisions = tuple(compiled.check_process(facts, host, now()))
        if not decisions:
            return ALLOW
        per_user = "*" in user_scoped or any(d.rule_id in user_scoped for d in decisions)
        for d in decisions:
            if d.action == "block" and d.exempted_by is None:
                reason = f"rule {d.rule_id}: {d.explanation}"
                return ExecVerdict(True, reason, d.rule_id, decisions, per_user=per_user)
        return ExecVerdict(False, decisions=decisions, per_user=per_user)

    return decide
