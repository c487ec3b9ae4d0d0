"""Turn a pid into :class:`ProcessFacts` by reading procfs.

The procfs root is a parameter so tests can point it at a fabricated tree. Reading is
best-effort and ordered cheapest-first (``stat``, ``cmdline``, ``exe``, ``status``): a
short-lived process that exits half-way still yields what was read before it vanished.

The executable's sha256 is computed only when the policy has hash rules, and at most once per
file version: the cache key is ``(st_dev, st_ino, st_mtime_ns, st_size)`` of the file behind
``/proc/PID/exe``. Hashing goes through ``/proc/PID/exe`` itself, so a binary that was deleted
or renamed after it started still hashes to its real content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from proscribe.core.policy.matchers.process import ProcessFacts

__all__ = ["Enricher", "HashCache", "StatFields", "read_stat"]

log = logging.getLogger(__name__)

PF_KTHREAD = 0x00200000  # task flag of kernel threads (include/linux/sched.h)
_MAX_HASH_BYTES = 1024 * 1024 * 1024  # a binary bigger than 1 GiB is not hashed
_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StatFields:
    """The few fields of ``/proc/PID/stat`` the agent uses."""

    comm: str
    state: str
    ppid: int
    flags: int
    start_ticks: int  # field 22: start time in clock ticks since boot

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def parse_stat(text: str) -> StatFields:
    """Parse ``/proc/PID/stat``; comm may hold spaces and parentheses, so split at the last ')'."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3]
    return StatFields(
        comm=comm,
        state=rest[0],
        ppid=int(rest[1]),
        flags=int(rest[6]),
        start_ticks=int(rest[19]),
    )


def read_small(path: str, limit: int = 65536) -> bytes:
    """One procfs file with raw ``os.read`` calls: several times cheaper than ``open()``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(16384, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_stat(pid: int, procfs: Path = Path("/proc")) -> StatFields | None:
    """``None`` when the process is gone or the file is unreadable."""
    try:
        return parse_stat(read_small(f"{procfs}/{pid}/stat").decode("utf-8", "replace"))
    except (OSError, ValueError, IndexError):
        return None


def read_boot_time(procfs: Path = Path("/proc")) -> float:
    try:
        with open(procfs / "stat", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


class HashCache:
    """Bounded LRU of executable digests keyed by file identity (dev, inode, mtime, size)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self.hashed = 0  # files actually read (a cache miss)

    def digest(self, exe_link: Path) -> str | None:
        try:
            st = os.stat(exe_link)  # follows the link: the real (possibly deleted) file
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        if st.st_size > _MAX_HASH_BYTES:
            return None
        try:
            h = hashlib.sha256()
            with open(exe_link, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except OSError:
            return None
        value = h.hexdigest()
        with self._lock:
            self.hashed += 1
            self._entries[key] = value
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value


class Enricher:
    """Reads everything a matcher needs about one pid from procfs."""

    def __init__(self, procfs: Path = Path("/proc"), hash_cache: HashCache | None = None) -> None:
        self.procfs = procfs
        self.hashes = hash_cache or HashCache()
        self.boot_time = read_boot_time(procfs)
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._users: dict[int, str] = {}

    def start_time(self, stat: StatFields) -> float:
        """Start time as epoch seconds, computed the way psutil's ``create_time`` is."""
        return self.boot_time + stat.start_ticks / self.ticks

    def start_time_of(self, pid: int) -> float | None:
        stat = read_stat(pid, self.procfs)
        return None if stat is None else self.start_time(stat)

    def user_name(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            if len(self._users) < 10_000:
                self._users[uid] = name
        return name

    def read_uid(self, pid: int) -> int | None:
        """The real uid from ``/proc/PID/status``."""
        try:
            status = read_small(f"{self.procfs}/{pid}/status")
            at = status.find(b"\nUid:")
            if at >= 0:
                return int(status[at + 5 :].split(None, 1)[0])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def with_user(self, facts: ProcessFacts) -> ProcessFacts:
        """``facts`` completed with the user (for facts read with ``with_user=False``)."""
        if facts.uid is not None:
            return facts
        uid = self.read_uid(facts.pid)
        if uid is None:
            return facts
        return replace(facts, uid=uid, user=self.user_name(uid))

    def facts(
        self, pid: int, *, with_sha256: bool = False, with_user: bool = True
    ) -> ProcessFacts | None:
        """Facts about ``pid``; ``None`` only when not even ``stat`` could be read.

        ``with_user=False`` skips ``status`` (a quarter of the cost): the real-time path reads
        the user only for a process some rule matched (exemptions need it), via
        :meth:`with_user`.
        """
        base = f"{self.procfs}/{pid}"
        stat = read_stat(pid, self.procfs)
        if stat is None:
            return None
        cmdline: tuple[str, ...] = ()
        try:
            raw = read_small(f"{base}/cmdline", 256 * 1024)
            if raw:
                cmdline = tuple(
                    part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0")
                )
        except OSError:
            pass
        exe = ""
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:
            pass
        uid = self.read_uid(pid) if with_user else None
        sha256 = self.hashes.digest(Path(base) / "exe") if with_sha256 and exe else None
        return ProcessFacts(
            pid=pid,
            ppid=stat.ppid,
            name=stat.comm,
            argv0=cmdline[0] if cmdline else "",
            exe=exe,
            cmdline=cmdline,
            user=self.user_name(uid) if uid is not None else "",
            uid=uid,
            sha256=sha256,
            start_time=self.start_time(stat),
        )
