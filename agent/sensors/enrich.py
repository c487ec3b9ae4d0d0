"""The agent's one reader of processes in procfs: a pid becomes :class:`ProcessFacts`.

Every part of the agent that asks /proc about a process reads it here: the process sensor
(:class:`Enricher`), the killer (start times), the pre-exec guard (:func:`read_ids`) and DNS
attribution (the process behind a socket). The procfs root is a parameter so tests can point it
at a fabricated tree. Reading is best-effort and ordered cheapest-first (``stat``, ``cmdline``,
``exe``, ``status``): a short-lived process that exits half-way still yields what was read before
it vanished.

Who ran a process: ``uid`` is the **real** uid (the first field of ``Uid:`` in
``/proc/PID/status``), the account that started it; exemptions by user and an event's ``user``
go by it. A setuid program (or one that called ``setresuid``) keeps the real uid of whoever ran
it while its **effective** uid changes, so the effective uid is a separate fact, ``euid``. The
owner of the ``/proc/PID`` directory is neither: it is the effective uid, or root for a process
that is not dumpable (e.g. after a setuid exec), and is not used.

The executable's sha256 is computed only when the policy has hash rules, and at most once per
file version: the cache key is ``(st_dev, st_ino, st_mtime_ns, st_size)`` of the file behind
``/proc/PID/exe``. Hashing goes through ``/proc/PID/exe`` itself, so a binary that was deleted
or renamed after it started still hashes to its real content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from proscribe.agent.sensors.users import UserNames
from proscribe.core.events import MAX_CMDLINE_ITEMS, clip
from proscribe.core.policy.matchers.process import ProcessFacts

__all__ = [
    "Enricher",
    "HashCache",
    "ProcessIds",
    "ProcessRef",
    "StatFields",
    "process_ref",
    "read_ids",
    "read_stat",
]

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


# The dynamic loader run as a program ("ld.so FILE"): the process's exe and comm are the
# loader's, so it is judged as FILE, the program it loads (docs/agent.md).
_LOADER = re.compile(r"^ld-(linux|musl)[-\w.]*\.so(\.\d+)*$")
_LOADER_VALUE_OPTIONS = frozenset(
    (
        "--library-path",
        "--glibc-hwcaps-prepend",
        "--glibc-hwcaps-mask",
        "--inhibit-rpath",
        "--audit",
        "--preload",
        "--argv0",
    )
)


def is_loader(exe: str) -> bool:
    return bool(_LOADER.match(exe.rsplit("/", 1)[-1]))


def loaded_file(facts: ProcessFacts, procfs: Path = Path("/proc")) -> str | None:
    """FILE of a program run through the dynamic loader (``ld.so FILE``: the process's exe is
    the loader, and its facts name FILE, as :meth:`Enricher.facts` reads them); None for any
    other program, or once the process is gone."""
    try:
        target = os.readlink(procfs / str(facts.pid) / "exe")
    except OSError:
        return None
    return facts.exe if facts.exe and facts.exe != target and is_loader(target) else None


def loaded_program(cmdline: tuple[str, ...], cwd: str) -> str | None:
    """FILE of ``ld.so [OPTION]... FILE [ARGS]``, as an absolute path (relative to ``cwd``,
    the process's working directory); None when there is none (``ld.so --list``, …)."""
    i, args = 0, cmdline[1:]
    while i < len(args):
        arg = args[i]
        if arg in _LOADER_VALUE_OPTIONS:
            i += 2
        elif arg.startswith("--"):
            if arg in ("--list", "--verify", "--help", "--version") or arg.startswith("--list-"):
                return None
            i += 1
        else:
            return os.path.realpath(os.path.join(cwd, arg))
    return None


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def read_stat(pid: int, procfs: Path = Path("/proc")) -> StatFields | None:
    """``None`` when the process is gone or the file is unreadable."""
    try:
        return parse_stat(read_small(f"{procfs}/{pid}/stat").decode("utf-8", "replace"))
    except (OSError, ValueError, IndexError):
        return None


class ProcessIds(NamedTuple):
    """The real and effective uid of a process (``Uid:`` in ``/proc/PID/status``)."""

    uid: int
    euid: int


def read_ids(pid: int, procfs: Path = Path("/proc")) -> ProcessIds | None:
    """Real and effective uid of ``pid``; ``None`` when it is gone or unreadable."""
    try:
        status = read_small(f"{procfs}/{pid}/status")
        at = status.find(b"\nUid:")
        if at < 0:
            return None
        fields = status[at + 5 : status.find(b"\n", at + 5)].split()
        return ProcessIds(int(fields[0]), int(fields[1] if len(fields) > 1 else fields[0]))
    except (OSError, ValueError, IndexError):
        return None


ProcessRef = dict[str, Any]  # the event schema's "process" object


def process_ref(facts: ProcessFacts) -> ProcessRef:
    """The event schema's ``process`` object for ``facts``, clipped to the wire limits."""
    return {
        "pid": facts.pid,
        "ppid": facts.ppid,
        "name": clip(facts.name),
        "exe": clip(facts.exe),
        "cmdline": [clip(a) for a in facts.cmdline[:MAX_CMDLINE_ITEMS]],
        "user": clip(facts.user),
        "uid": facts.uid,
        "euid": facts.euid,
        "sha256": facts.sha256,
    }


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
    """Bounded LRU of executable digests keyed by file identity and state (dev, inode, mtime,
    ctime, size). ctime is in the key because mtime can be set back (``touch -r``) after a file
    is rewritten in place; ctime cannot be set by a user, and every write or chmod moves it."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self.hashed = 0  # files actually read (a cache miss)

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def cached(
        self, exe_link: Path, expect: tuple[int, int] | None = None
    ) -> tuple[str | None, int]:
        """(digest, 0) when known without reading the file, else (None, its size in bytes;
        -1 when it cannot be hashed at all: unreadable, above the size cap, or not the file
        ``expect`` names by (device, inode))."""
        try:
            st = os.stat(exe_link)
        except OSError:
            return None, -1
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            return None, -1
        with self._lock:
            hit = self._entries.get(self._key(st))
            if hit is not None:
                self._entries.move_to_end(self._key(st))
                return hit, 0
        return None, (st.st_size if st.st_size <= _MAX_HASH_BYTES else -1)

    def digest(self, exe_link: Path, expect: tuple[int, int] | None = None) -> str | None:
        """The file's digest, keyed by the state of the file actually opened (``fstat`` of the
        open file: an exec between a ``stat`` and the ``open`` of /proc/PID/exe cannot file one
        image's digest under another's key); None when it is not the file ``expect`` names."""
        try:
            fh = open(exe_link, "rb")  # noqa: SIM115 (closed below) follows the link
        except OSError:
            return None
        with fh:
            try:
                st = os.fstat(fh.fileno())
            except OSError:
                return None
            if expect is not None and (st.st_dev, st.st_ino) != expect:
                return None
            key = self._key(st)
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None:
                    self._entries.move_to_end(key)
                    return hit
            if st.st_size > _MAX_HASH_BYTES:
                return None
            try:
                h = hashlib.sha256()
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

    def __init__(
        self,
        procfs: Path = Path("/proc"),
        hash_cache: HashCache | None = None,
        users: UserNames | None = None,
    ) -> None:
        self.procfs = procfs
        self.hashes = hash_cache or HashCache()
        self.users = users if users is not None else UserNames()
        self.boot_time = read_boot_time(procfs)
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def start_time(self, stat: StatFields) -> float:
        """Start time as epoch seconds, computed the way psutil's ``create_time`` is."""
        return self.boot_time + stat.start_ticks / self.ticks

    def start_time_of(self, pid: int) -> float | None:
        stat = read_stat(pid, self.procfs)
        return None if stat is None else self.start_time(stat)

    def with_user(self, facts: ProcessFacts) -> ProcessFacts:
        """``facts`` completed with the user (for facts read with ``with_user=False``)."""
        if facts.uid is not None:
            return facts
        ids = read_ids(facts.pid, self.procfs)
        if ids is None:
            return facts
        return replace(facts, uid=ids.uid, euid=ids.euid, user=self.users.name(ids.uid))

    def facts(
        self, pid: int, *, with_sha256: bool = False, with_user: bool = True
    ) -> ProcessFacts | None:
        """Facts about ``pid``; ``None`` only when not even ``stat`` could be read.

        ``with_user=False`` skips ``status`` (a quarter of the cost): the real-time path reads
        the user only for a process some rule matched (exemptions need it), via
        :meth:`with_user`.
        """
        base = f"{self.procfs}/{pid}"
        # One image's facts, never a mix: an exec while they are read (comm and exe read
        # before it, the command line after) is seen as a changed exe or comm, and read again.
        stat: StatFields | None = None
        exe_id: tuple[int, int] | None = None
        for _attempt in range(3):
            exe = _readlink(f"{base}/exe")
            exe_id = _file_identity(f"{base}/exe")
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
            after = read_stat(pid, self.procfs)
            if _readlink(f"{base}/exe") == exe and (after is None or after.comm == stat.comm):
                break
        assert stat is not None  # the loop ran at least once and returned on None
        if exe and is_loader(exe):
            program = loaded_program(cmdline, f"{base}/cwd")
            if program is not None:
                exe = program
        ids = read_ids(pid, self.procfs) if with_user else None
        sha256 = self.hashes.digest(Path(base) / "exe", exe_id) if with_sha256 and exe else None
        return ProcessFacts(
            pid=pid,
            ppid=stat.ppid,
            name=stat.comm,
            argv0=cmdline[0] if cmdline else "",
            exe=exe,
            cmdline=cmdline,
            user=self.users.name(ids.uid) if ids is not None else "",
            uid=ids.uid if ids is not None else None,
            euid=ids.euid if ids is not None else None,
            sha256=sha256,
            start_time=self.start_time(stat),
            exe_id=exe_id,
        )
