"""Exact counts across agent restarts: one event per sighting of one process under one rule.

A process is identified by the boot it runs in (``/proc/sys/kernel/random/boot_id``), its pid
and its start time in clock ticks since boot (``/proc/PID/stat`` field 22, exact, unlike the
epoch time derived from it, which moves with ``btime``). The in-memory repeat folder
(:mod:`proscribe.agent.repeats`) drops a process seen again within one run; this book keeps the
same knowledge in the spool, so that after ``kill -9`` of the agent or a clean restart the first
sweep does not report the processes still running a second time.

Order: a sighting is looked up before its event is recorded and written after it was committed
(at least once: a crash between the two can only report a process twice, never lose it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from proscribe.agent.spool import Spool

__all__ = ["SightingBook", "read_boot_id"]

log = logging.getLogger(__name__)


def read_boot_id(procfs: Path = Path("/proc")) -> str:
    """This boot's id; "" where there is none (then only the pid and start time identify)."""
    try:
        return (procfs / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class SightingBook:
    def __init__(self, spool: Spool, boot_id: str) -> None:
        self.spool = spool
        self.boot_id = boot_id

    def key(self, rule_id: str, pid: int, start_ticks: int) -> str:
        return f"{self.boot_id}/{pid}/{start_ticks}/{rule_id}"

    def seen(self, key: str) -> bool:
        return self.spool.sighted(key)

    def record(self, key: str) -> None:
        self.spool.record_sighting(key, self.boot_id)
