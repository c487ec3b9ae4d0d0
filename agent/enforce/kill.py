"""Kill a blocked process by pid, safely.

Safety rules, checked on every call:

* the pid must still be the process that was judged: its start time (``/proc/PID/stat`` field
  22) must equal the one recorded at detection, otherwise the pid was reused and nothing is sent;
  where ``pidfd_open`` exists the check is made on a pidfd and the signal goes through the same
  pidfd, so the pid cannot be recycled between check and kill;
* never the agent itself, its parent, pid 1, or a kernel thread (``PF_KTHREAD``, or ppid 2).

With ``children=True`` the descendants (found by walking ``/proc/*/stat`` ppid links before the
parent dies and they are re-parented) are killed too, each with the same checks.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proscribe.agent.sensors.enrich import Enricher, StatFields, read_stat

__all__ = ["KillOutcome", "Killer"]

log = logging.getLogger(__name__)

KTHREADD_PID = 2


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

    def kill(self, pid: int, start_time: float | None, *, children: bool = False) -> KillOutcome:
        stat = read_stat(pid, self.procfs)
        protected = self.protected_reason(pid, stat)
        if protected:
            log.warning("not killing pid %s: %s", pid, protected)
            return KillOutcome(pid, False, protected)
        if stat is None:
            return KillOutcome(pid, False, "gone")
        if start_time is None:
            return KillOutcome(pid, False, "error: no start time recorded; refusing to guess")
        descendants = self._descendants(pid) if children else []
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
