"""The kernel exec guard as an agent part: loads the eBPF guard when it can, keeps its maps in
step with the policy in force, and says which guard is active.

``[enforce] kernel_guard``:

* ``auto`` (default): in enforce mode, on Linux as root with BTF and libbpf, the eBPF guard
  (:mod:`proscribe.agent.enforce.bpf`) kills denied execs in the kernel; anywhere else the agent
  goes on with the process sensor's kill and :attr:`KernelGuard.state` says why;
* ``required``: the agent refuses to start without it (one line naming the reason);
* ``off``: never loaded.

Monitor mode never loads it: nothing is killed there, and the process sensor reports.

The maps are rebuilt from the policy (:meth:`refresh`) when it changes and every
``refresh_interval`` seconds (exemptions that expire, files that appear under path globs). A file
the process sensor found denied by hash is learned (:meth:`learn`) so that its next exec dies in
the kernel too. :meth:`covers` tells the process guard that the kernel already killed (and
reports) an exec, so one exec is one event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proscribe.agent.policy_source import PolicyInForce
from proscribe.agent.sensors.enrich import loaded_file, read_boot_time
from proscribe.core.errors import ConfigError
from proscribe.core.policy.matchers.process import COMM_MAX, ProcessFacts, basename, clean_exe

if TYPE_CHECKING:
    from proscribe.agent.enforce.bpf.guard import KernelExecGuard, KernelReport
    from proscribe.agent.enforce.bpf.plan import FileId

__all__ = ["KernelGuard"]

log = logging.getLogger(__name__)

# /proc's start times are whole clock ticks, rounded down: a process whose start time is not
# after the attach may have started before it, and is the process sensor's to judge
_ATTACH_MARGIN = 0.0


class KernelGuard:
    def __init__(
        self,
        choice: str,
        *,
        mode: str,
        policy: PolicyInForce,
        hostname: str,
        procfs: Path = Path("/proc"),
        boot_time: float | None = None,
        refresh_interval: float = 60.0,
    ) -> None:
        self.choice = choice
        self.mode = mode
        self.policy = policy
        self.hostname = hostname
        self.procfs = procfs
        # the btime the process sensor's start times were computed with (its Enricher's)
        self.boot_time = read_boot_time(procfs) if boot_time is None else boot_time
        self.refresh_interval = refresh_interval
        self.state = "off"
        self.detail = ""
        self.refresh_seconds: float | None = None  # how long the last policy-to-maps took
        self.refresh_errors = 0
        self._guard: KernelExecGuard | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._guard is not None

    def start(self, on_report: Callable[[KernelReport], None]) -> None:
        """Load and attach (when it can); the kernel's reports go to ``on_report`` from then on
        (the process guard's ``record_kernel_report``), on the guard's reader thread."""
        if self.choice == "off":
            self.state, self.detail = "off", "enforce.kernel_guard = off"
            return
        if self.mode != "enforce":
            self.state, self.detail = "off", "monitor mode: nothing is killed"
            return
        from proscribe.agent.enforce.bpf.guard import BpfUnavailable, KernelExecGuard
        from proscribe.agent.enforce.bpf.plan import resolve_loaders

        try:
            guard = KernelExecGuard.open(on_report)
            guard.set_loaders(resolve_loaders())
        except (BpfUnavailable, OSError) as err:
            self.state, self.detail = "unavailable", str(err)
            if self.choice == "required":
                raise ConfigError(
                    f"enforce.kernel_guard = required, but the eBPF exec guard cannot run: {err} "
                    '(fix: run as root on a kernel with BTF and libbpf1, or set "auto")'
                ) from err
            log.warning("kernel exec guard not used (%s); the process sensor kills", err)
            return
        self._guard = guard
        self.refresh()
        guard.start()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._refresh_loop, name="proscribe-bpf-refresh", daemon=True
        )
        self._thread.start()
        self.state, self.detail = "running", ""
        log.info("kernel exec guard running (eBPF): %s", guard.stats())

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            guard, self._guard = self._guard, None
        if guard is not None:
            guard.close(timeout)  # detached: nothing of the agent stays in the kernel
            self.state = "stopped"

    def refresh(self) -> None:
        """Rebuild the maps from the policy in force (a policy change, or periodically)."""
        from proscribe.agent.enforce.bpf.plan import GuardPlan, plan_for

        with self._lock:
            guard = self._guard
            if guard is None:
                return
            began = time.monotonic()
            compiled = self.policy.compiled
            try:
                plan = (
                    plan_for(compiled.policy, self.hostname, self.policy.now())
                    if compiled is not None
                    else GuardPlan()
                )
                guard.apply(plan)
            except Exception:
                self.refresh_errors += 1
                log.exception("kernel exec guard: maps not updated (the process sensor kills)")
                return
            self.refresh_seconds = time.monotonic() - began

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh()

    def covers(self, facts: ProcessFacts) -> bool:
        """Whether the kernel denies this process's exec: it was killed there and reported, so
        the process sensor records nothing for it. A process that started before the guard was
        attached, or whose file the kernel does not know, is the sensor's."""
        guard = self._guard
        if guard is None or facts.start_time is None:
            return False
        # both since boot: /proc's start time is boot-relative, while the epoch time in facts
        # is that plus /proc/stat's btime (whole seconds, off by up to one)
        if facts.start_time - self.boot_time < guard.attached_at - _ATTACH_MARGIN:
            return False
        exe = clean_exe(facts.exe)
        loaded = loaded_file(facts, self.procfs)
        if loaded is not None:
            # the loader's FILE: the kernel kills when the loader maps it executable (by its
            # name or its identity); the sensor must not race it to a second event
            try:
                st = os.stat(loaded)
            except OSError:
                return guard.covers(basename(loaded), None)
            from proscribe.agent.enforce.bpf.plan import file_id

            return guard.covers(basename(loaded), file_id(st), st.st_ctime_ns)
        # comm as the kernel judged it: whole when shorter than 15 characters (a process the
        # kernel killed is often read as it dies, without an exe)
        if len(facts.name) < COMM_MAX and guard.covers(facts.name, None):
            return True
        found = self._file_id(facts.pid, exe)
        if found is None:
            return guard.covers(basename(exe), None)
        return guard.covers(basename(exe), *found)

    def learn(self, facts: ProcessFacts, rule_id: str) -> bool:
        """The process sensor found ``facts``' executable denied by its hash: deny that file
        in the kernel while it is unchanged (its ctime)."""
        guard = self._guard
        if guard is None:
            return False
        from proscribe.agent.enforce.bpf.plan import file_id

        try:
            st = os.stat(self.procfs / str(facts.pid) / "exe")
        except OSError:
            return False
        return guard.learn_file(file_id(st), rule_id, st.st_ctime_ns)

    def _file_id(self, pid: int, exe: str) -> tuple[FileId, int] | None:
        """The executable's identity and ctime: through /proc while the process lives, else
        the file at its path (a process the kernel killed is usually gone already)."""
        from proscribe.agent.enforce.bpf.plan import file_id

        for path in (self.procfs / str(pid) / "exe", Path(exe) if exe else None):
            if path is None:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            return file_id(st), st.st_ctime_ns
        return None

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"state": self.state, "detail": self.detail}
        guard = self._guard
        if guard is not None:
            stats.update(guard.stats())
            stats["refresh_seconds"] = self.refresh_seconds
            stats["refresh_errors"] = self.refresh_errors
        return stats
