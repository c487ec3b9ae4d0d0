"""Polling: find processes not seen before, by (pid, start time).

Used alone where the netlink connector is unavailable (other platforms, no root, or
``process = "poll"``) and, beside netlink, as the periodic safety-net sweep that catches what
started before the agent or what an overflowing event stream lost. On Linux the scan reads
``/proc`` directly (one ``stat`` read per pid); elsewhere it asks psutil.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from proscribe.agent.sensors.enrich import Enricher, read_stat
from proscribe.core.policy.matchers.process import ProcessFacts

__all__ = ["ProcessScanner", "psutil_facts"]


class ProcessScanner:
    """Remembers which (pid, start time) pairs were already handed out."""

    def __init__(
        self,
        list_pids: Callable[[], list[int]],
        start_time_of: Callable[[int], float | None],
    ) -> None:
        self._list_pids = list_pids
        self._start_time_of = start_time_of
        self._seen: dict[int, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_platform(cls, enricher: Enricher | None) -> ProcessScanner:
        if enricher is not None and sys.platform.startswith("linux"):
            procfs = enricher.procfs

            def list_proc() -> list[int]:
                return [int(n) for n in os.listdir(procfs) if n.isdigit()]

            def start_proc(pid: int) -> float | None:
                stat = read_stat(pid, procfs)
                if stat is None or stat.kernel_thread:
                    return None
                return enricher.start_time(stat)

            return cls(list_proc, start_proc)

        def start_psutil(pid: int) -> float | None:
            try:
                return psutil.Process(pid).create_time()
            except (psutil.Error, OSError):
                return None

        return cls(psutil.pids, start_psutil)

    def mark(self, pid: int, start_time: float | None) -> None:
        if start_time is not None:
            with self._lock:
                self._seen[pid] = start_time

    def forget_all(self) -> None:
        """The next :meth:`new_processes` returns every running process (e.g. a new policy)."""
        with self._lock:
            self._seen.clear()

    def new_processes(self) -> list[tuple[int, float]]:
        """Processes whose (pid, start time) was not handed out before; prunes the dead.

        Nothing is marked here: the checker marks a process once it has handled it, so one
        dropped on a full queue is offered again by the next scan.
        """
        with self._lock:
            before = dict(self._seen)
        try:
            pids = self._list_pids()
        except OSError:
            return []
        alive: dict[int, float] = {}
        fresh: list[tuple[int, float]] = []
        for pid in pids:
            known = before.get(pid)
            if known is not None:
                # Known pid: assume the same process rather than read its stat again (the
                # scan's main cost). A pid reused between two scans is missed by this scan;
                # with pid_max in the millions that needs a wrap-around within one interval.
                alive[pid] = known
                continue
            start = self._start_time_of(pid)
            if start is None:
                continue
            alive[pid] = start
            fresh.append((pid, start))
        with self._lock:
            self._seen = {
                pid: start
                for pid, start in self._seen.items()
                # listed: keep if still the same process; unlisted: keep only marks made
                # while this scan ran (the process may have started after the listing)
                if alive.get(pid) == start or (pid not in alive and pid not in before)
            }
        return fresh

    def __len__(self) -> int:
        return len(self._seen)


def psutil_facts(pid: int, *, with_sha256: bool = False) -> ProcessFacts | None:
    """Facts from psutil, for platforms without procfs; best-effort like the procfs reader."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            ppid = proc.ppid()
            start = proc.create_time()
    except (psutil.Error, OSError):
        return None
    cmdline: tuple[str, ...] = ()
    exe = user = ""
    uid: int | None = None
    euid: int | None = None
    try:
        cmdline = tuple(proc.cmdline())
    except (psutil.Error, OSError):
        pass
    try:
        exe = proc.exe()
    except (psutil.Error, OSError):
        pass
    try:
        user = proc.username()  # psutil names the real uid's account, as procfs readers do
        if hasattr(proc, "uids"):
            ids = proc.uids()
            uid, euid = ids.real, ids.effective
    except (psutil.Error, OSError, AttributeError):
        pass
    sha256: str | None = None
    if with_sha256 and exe:
        try:
            h = hashlib.sha256()
            with Path(exe).open("rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    h.update(chunk)
            sha256 = h.hexdigest()
        except OSError:
            sha256 = None
    return ProcessFacts(
        pid=pid,
        ppid=ppid,
        name=name,
        argv0=cmdline[0] if cmdline else "",
        exe=exe,
        cmdline=cmdline,
        user=user,
        uid=uid,
        euid=euid,
        sha256=sha256,
        start_time=start,
    )
