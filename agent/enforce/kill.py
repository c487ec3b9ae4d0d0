"""Kill a blocked process by pid, safely.

Safety rules, checked on every call:

* the pid must still be the process that was judged. Best: the process sensor pinned it with a
  pidfd *before* reading it (``Sighting.pidfd``), and the signal goes through that pidfd — an
  innocent process that took the pid since (even within the same clock tick, which a start-time
  check cannot tell apart) is never signalled. Without one, its start time (``/proc/PID/stat``
  field 22) must equal the one recorded at detection, checked on a pidfd opened now;
* a process that already exited (gone, or a zombie) is reported as ``gone``, never ``killed``;
* never the agent itself, its parent, pid 1, or a kernel thread (``PF_KTHREAD``, or ppid 2).

With ``children=True`` the descendants (found by walking ``/proc/*/stat`` ppid links before the
parent dies and they are re-parented) are killed too, each with the same checks.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proscribe.agent.sensors.enrich import Enricher, StatFields, read_stat

__all__ = ["KillOutcome", "Killer"]

log = logging.getLogger(__name__)

KTHREADD_PID = 2
_HOLD_WAIT = 0.05  # seconds to wait for a SIGSTOP to take effect


@dataclass(frozen=True, slots=True)
class KillOutcome:
    pid: int
    killed: bool
    reason: str  # "killed" | "gone" | "pid_reused" | "protected: …" | "error: …"
    children_killed: tuple[int, ...] = field(default=())

    @property
    def gone(self) -> bool:
        return self.reason in ("gone", "pid_reused")


class Killer:
    def __init__(
        self,
        enricher: Enricher,
        *,
        self_pid: int | None = None,
        parent_pid: int | None = None,
        sig: int = signal.SIGKILL,
    ) -> None:
        self.enricher = enricher
        self.procfs = enricher.procfs
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self.parent_pid = os.getppid() if parent_pid is None else parent_pid
        self.sig = sig

    def protected_reason(self, pid: int, stat: StatFields | None) -> str | None:
        if pid <= 1:
            return "protected: pid 1 / invalid pid"
        if pid == self.self_pid:
            return "protected: the agent itself"
        if pid == self.parent_pid:
            return "protected: the agent's parent"
        if pid == KTHREADD_PID:
            return "protected: kernel thread"
        if stat is not None and (stat.kernel_thread or stat.ppid == KTHREADD_PID):
            return "protected: kernel thread"
        return None

    def running(self, pid: int, start_time: float | None, pidfd: int = -1) -> bool:
        """Whether the judged process still runs (not exited, not a zombie): with a pidfd the
        pidfd's process, else the pid if its start time is still the judged one."""
        stat = read_stat(pid, self.procfs)
        if stat is None or stat.state in ("Z", "X", "x"):
            return False
        if pidfd >= 0:
            try:
                signal.pidfd_send_signal(pidfd, 0)
            except OSError:
                return False
            return True
        return start_time is not None and abs(self.enricher.start_time(stat) - start_time) < 1e-6

    def hold(self, pid: int, start_time: float | None, pidfd: int = -1) -> bool:
        """Stop the judged process where it stands (SIGSTOP through its pidfd) and say whether
        it is still there to be killed. Once stopped it cannot exit on its own, so the event
        committed next can say ``killed`` truthfully; False means it had already exited.
        Without a pidfd only :meth:`running` can be asked."""
        if pidfd < 0 or not self.running(pid, start_time, pidfd):
            return pidfd < 0 and self.running(pid, start_time, pidfd)
        if self.protected_reason(pid, read_stat(pid, self.procfs)):
            return True  # never stopped; the kill refuses it and says why
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        except OSError:
            return False
        deadline = time.monotonic() + _HOLD_WAIT
        while True:
            stat = read_stat(pid, self.procfs)
            if stat is None or stat.state in ("Z", "X", "x"):
                return False
            if stat.state in ("T", "t") or time.monotonic() >= deadline:
                return True  # stopped (or in D state: the SIGKILL waits for it there)
            time.sleep(0.0005)

    def kill(
        self,
        pid: int,
        start_time: float | None,
        *,
        children: bool = False,
        pidfd: int = -1,
    ) -> KillOutcome:
        """Kill ``pid`` if it is still the judged process. ``pidfd``: a pidfd opened when the
        process was first seen (before it was read), which names it exactly; the signal goes
        through it, so an innocent process that took the pid since is never signalled."""
        stat = read_stat(pid, self.procfs)
        protected = self.protected_reason(pid, stat)
        if protected:
            log.warning("not killing pid %s: %s", pid, protected)
            return KillOutcome(pid, False, protected)
        if stat is None:
            return KillOutcome(pid, False, "gone")
        if start_time is None and pidfd < 0:
            return KillOutcome(pid, False, "error: no start time recorded; refusing to guess")
        descendants = self._descendants(pid) if children else []
        if pidfd >= 0:
            outcome = self._kill_pinned(pid, pidfd)
        else:
            assert start_time is not None
            outcome = self._kill_one(pid, start_time)
        if not children:
            return outcome
        killed_children: list[int] = []
        for child_pid, child_start in descendants:
            if self.protected_reason(child_pid, read_stat(child_pid, self.procfs)):
                continue
            child = self._kill_one(child_pid, child_start)
            if child.killed:
                killed_children.append(child_pid)
        return KillOutcome(outcome.pid, outcome.killed, outcome.reason, tuple(killed_children))

    def _same_process(self, pid: int, start_time: float) -> bool | None:
        """True/False for same/reused; None when gone."""
        stat = read_stat(pid, self.procfs)
        if stat is None:
            return None
        return abs(self.enricher.start_time(stat) - start_time) < 1e-6

    def _kill_pinned(self, pid: int, pidfd: int) -> KillOutcome:
        stat = read_stat(pid, self.procfs)
        if stat is None or stat.state in ("Z", "X", "x"):
            return KillOutcome(pid, False, "gone")  # exited on its own (a zombie, or reaped)
        try:
            signal.pidfd_send_signal(pidfd, self.sig)
        except ProcessLookupError:
            return KillOutcome(pid, False, "gone")
        except OSError as err:
            return KillOutcome(pid, False, f"error: {err.strerror or err}")
        return KillOutcome(pid, True, "killed")

    def _kill_one(self, pid: int, start_time: float) -> KillOutcome:
        pidfd = -1
        if hasattr(os, "pidfd_open") and self.procfs == Path("/proc"):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return KillOutcome(pid, False, "gone")
            except OSError:
                pidfd = -1
        try:
            same = self._same_process(pid, start_time)
            if same is None:
                return KillOutcome(pid, False, "gone")
            if not same:
                log.warning("not killing pid %s: it was reused by another process", pid)
                return KillOutcome(pid, False, "pid_reused")
            try:
                if pidfd >= 0:
                    signal.pidfd_send_signal(pidfd, self.sig)
                else:
                    os.kill(pid, self.sig)
            except ProcessLookupError:
                return KillOutcome(pid, False, "gone")
            except OSError as err:
                if err.errno == errno.ESRCH:
                    return KillOutcome(pid, False, "gone")
                return KillOutcome(pid, False, f"error: {err.strerror or err}")
            return KillOutcome(pid, True, "killed")
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _descendants(self, root: int) -> list[tuple[int, float]]:
        """(pid, start time) of every descendant of ``root``, parents before children."""
        by_parent: dict[int, list[tuple[int, float]]] = {}
        for pid in _pids(self.procfs):
            stat = read_stat(pid, self.procfs)
            if stat is None:
                continue
            by_parent.setdefault(stat.ppid, []).append((pid, self.enricher.start_time(stat)))
        found: list[tuple[int, float]] = []
        frontier = [root]
        seen = {root}
        while frontier:
            parent = frontier.pop()
            for child, start in by_parent.get(parent, []):
                if child not in seen:
                    seen.add(child)
                    found.append((child, start))
                    frontier.append(child)
        return found


def _pids(procfs: Path) -> Iterable[int]:
    try:
        names = os.listdir(procfs)
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()]
