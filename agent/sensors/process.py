"""The process sensor: notices every program start and hands its facts to a checker.

Backends, chosen once at :meth:`ProcessSensor.start`:

* ``netlink`` (Linux, root): the kernel's process connector reports every exec (and comm change)
  as it happens. A reader thread only parses and queues; a checker thread enriches from /proc
  and calls the handler. A periodic sweep catches what started before the agent, and an
  immediate sweep follows every socket overflow (events the kernel dropped).
* ``poll``: psutil / procfs scans at ``poll_interval``; detection within one interval.
* ``auto``: netlink when running as root on Linux, else poll. When netlink was *asked for* and
  cannot be opened, the sensor falls back to polling and says so loudly (ERROR log, state);
  under ``auto`` the fallback is quiet (INFO).

The hand-off between the backends and the checker is the agent's bounded
:class:`~proscribe.agent.worker.BackgroundWorker`, woken by each sighting: :meth:`submit` returns
False when it is full and the drop is counted by reason; a sweep later re-offers anything still
running.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from proscribe.agent.counters import Counters
from proscribe.agent.sensors._poll import ProcessScanner, psutil_facts
from proscribe.agent.sensors.enrich import Enricher, loaded_file
from proscribe.agent.worker import BackgroundWorker
from proscribe.core.policy.matchers.process import ProcessFacts

__all__ = ["ProcessSensor", "Sighting"]

log = logging.getLogger(__name__)

Handler = Callable[[ProcessFacts, "Sighting"], None]


@dataclass(frozen=True, slots=True)
class Sighting:
    """One report that a process started (or renamed itself) and needs checking."""

    pid: int
    source: str  # "exec" | "comm" | "fork" | "sweep" | "poll"
    observed: float  # time.monotonic() when the sensor learned of it
    facts: ProcessFacts | None = None  # read at once by the netlink reader (no hash yet)
    # A pidfd opened *before* ``facts`` were read and checked alive after: it names exactly the
    # process the facts describe, so a kill through it can never hit a process that took the
    # pid since. -1 where pidfds are unavailable. Owned by the sensor: closed after the check.
    pidfd: int = -1


class ProcessSensor:
    def __init__(
        self,
        choice: str,
        handler: Handler,
        *,
        procfs: Path = Path("/proc"),
        enricher: Enricher | None = None,
        poll_interval: float = 1.0,
        sweep_interval: float = 30.0,
        queue_size: int = 4096,
        hash_queue: int = 64,
        hash_budget: int = 8 * 1024 * 1024 * 1024,
        want_sha256: Callable[[], bool] = lambda: False,
        interesting: Callable[[ProcessFacts], bool] | None = None,
        is_root: bool | None = None,
        platform: str = sys.platform,
    ) -> None:
        self.choice = choice
        self.handler = handler
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.want_sha256 = want_sha256
        # Optional prefilter run by the netlink reader: facts for which it returns False never
        # cross the queue (most programs match no rule). Not used when hashes are needed.
        self.interesting = interesting
        self.linux = platform.startswith("linux")
        # pin each process with a pidfd before reading it (Linux 5.3+, the real /proc only)
        self.pidfds = self.linux and hasattr(os, "pidfd_open") and procfs == Path("/proc")
        self.is_root = (os.geteuid() == 0) if is_root is None else is_root
        # the procfs reader (Linux); elsewhere psutil reads processes
        self.enricher: Enricher | None = None
        if self.linux:
            self.enricher = enricher if enricher is not None else Enricher(procfs)
        self.scanner = ProcessScanner.for_platform(self.enricher)
        self.checker: BackgroundWorker[Sighting] = BackgroundWorker(
            self._check_one, name="proscribe-process-check", maxsize=queue_size
        )
        # executables to hash (for sha256 rules), read on their own thread
        self.hash_budget = hash_budget
        self._hash_bytes = 0
        self._hash_lock = threading.Lock()
        self.hasher: BackgroundWorker[tuple[Sighting, int]] = BackgroundWorker(
            self._hash_one, name="proscribe-process-hash", maxsize=hash_queue
        )
        self.drops = Counters()  # "overflow": the kernel dropped events; "queue_full"
        self.counts = Counters()  # sightings checked, by source; "vanished"
        self._errors = Counters(("errors",))
        self.backend = "off"
        self.state = "stopped"
        self.detail = ""
        self._stop = threading.Event()
        self._sweep_now = threading.Event()
        self._full_sweep = False
        self._threads: list[threading.Thread] = []
        self._connector: Any = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.choice == "off":
            self.backend, self.state = "off", "off"
            return
        self.backend = "poll"
        if self.choice in ("auto", "netlink"):
            reason = self._open_netlink()
            if reason is None:
                self.backend = "netlink"
            elif self.choice == "netlink":
                log.error(
                    "process sensor: netlink was requested but is unavailable (%s); "
                    "falling back to polling every %.1fs",
                    reason,
                    self.poll_interval,
                )
                self.detail = f"netlink unavailable: {reason}; polling instead"
            else:
                log.info("process sensor: netlink not used (%s); polling", reason)
                self.detail = f"polling ({reason})"
        self._stop.clear()
        self._full_sweep = True
        self._sweep_now.set()  # the first sweep finds what started before the agent
        self.checker.start()
        self.hasher.start()
        self._spawn(self._sweep_loop, "proscribe-process-sweep")
        if self.backend == "netlink":
            self._spawn(self._netlink_loop, "proscribe-process-netlink")
        self.state = "running"
        log.info("process sensor running (%s)", self.backend)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._sweep_now.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self.checker.stop(max(0.0, deadline - time.monotonic()))
        self.hasher.stop(max(0.0, deadline - time.monotonic()))
        if self._connector is not None:
            self._connector.close()
            self._connector = None
        if self.state == "running":
            self.state = "stopped"

    def healthy(self) -> bool:
        """False when a thread the sensor cannot work without has died (a bug); the netlink
        reader may end on its own (it falls back to polling), so it does not count."""
        if not self._threads:
            return True  # not running (off, or stopped): nothing has died
        threads = [t for t in self._threads if t.name != "proscribe-process-netlink"]
        return self.checker.alive and all(t.is_alive() for t in threads)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _open_netlink(self) -> str | None:
        """None when subscribed, else why not."""
        if not self.linux:
            return f"not Linux ({sys.platform})"
        if not self.is_root:
            return "not running as root"
        from proscribe.agent.sensors._netlink_linux import ProcConnector

        connector = ProcConnector()
        try:
            connector.open()
        except OSError as err:
            return f"process connector: {err.strerror or err}"
        self._connector = connector
        return None

    # -- queue -----------------------------------------------------------------------------
    def submit(self, sighting: Sighting) -> bool:
        """Queue a sighting for the checker; False (and a counted drop) when the queue is full."""
        if self.checker.submit(sighting):
            return True
        self.drops.add("queue_full")
        return False

    @property
    def errors(self) -> int:
        """Failures the sensor survived (its threads and the checker's)."""
        return self._errors["errors"] + self.checker.counts["errors"] + self.hasher.counts["errors"]

    def _error(self) -> None:
        self._errors.add("errors")

    def request_sweep(self, *, full: bool = False) -> None:
        """Sweep soon; ``full`` re-checks every running process (e.g. after a policy change)."""
        if full:
            self._full_sweep = True
        self._sweep_now.set()

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "backend": self.backend,
            "detail": self.detail,
            "queue_depth": self.checker.depth(),
            "hash_queue_depth": self.hasher.depth(),
            "seen": self.counts.snapshot(),
            "drops": self.drops.snapshot(),
            "errors": self.errors,
            "hashed": self.enricher.hashes.hashed if self.enricher else 0,
        }

    # -- threads ---------------------------------------------------------------------------
    def _netlink_loop(self) -> None:
        from proscribe.agent.sensors._netlink_linux import (
            PROC_EVENT_COMM,
            PROC_EVENT_EXEC,
            PROC_EVENT_FORK,
        )

        connector = self._connector
        own = os.getpid()
        while not self._stop.is_set():
            try:
                events, overflow = connector.read(0.5)
            except OSError as err:
                if self._stop.is_set():
                    return
                self._error()
                log.error("process connector read failed: %s; polling instead", err)
                self.backend, self.detail = "poll", f"netlink failed: {err}; polling"
                return
            except Exception:
                self._error()
                log.exception("process connector loop error (continuing)")
                continue
            if overflow:
                # the kernel dropped events: count it and look at /proc at once
                self.drops.add("overflow")
                self.request_sweep()
            now = time.monotonic()
            for event in events:
                if event.what == PROC_EVENT_EXEC:
                    source = "exec"
                elif event.what == PROC_EVENT_COMM and event.pid == event.tgid:
                    source = "comm"
                elif event.what == PROC_EVENT_FORK and event.pid == event.tgid:
                    # a new process (not a thread): a denied program's child, or the second
                    # half of a double fork whose parent exits, is judged now, not at a sweep
                    source = "fork"
                else:
                    continue
                if event.tgid != own:
                    self._offer(event.tgid, source, now)

    def _offer(self, pid: int, source: str, now: float) -> None:
        """Read /proc now, prefilter, and queue what some rule may match.

        Read at once, while the process surely exists: a short-lived program is often gone
        by the time the checker would get to it. The user and the hash are read later, and
        only for what matched.
        """
        if self.enricher is None:
            self.submit(Sighting(pid, source, now))  # psutil platforms: the checker reads
            return
        pidfd = self._pin(pid)
        facts = self.enricher.facts(pid, with_user=False)
        if facts is None or (pidfd >= 0 and not _alive(pidfd)):
            _close(pidfd)
            self.counts.add("vanished")
            return
        if self._uninteresting(facts):
            _close(pidfd)
            self.counts.add(source)
            self.scanner.mark(facts.pid, facts.start_time)
            return
        if not self.submit(Sighting(pid, source, now, facts, pidfd)):
            _close(pidfd)

    def _pin(self, pid: int) -> int:
        if not self.pidfds:
            return -1
        try:
            return os.pidfd_open(pid)
        except OSError:
            return -1

    def _uninteresting(self, facts: ProcessFacts) -> bool:
        if self.interesting is None or self.want_sha256():
            return False
        try:
            return not self.interesting(facts)
        except Exception:
            self._error()
            log.exception("process prefilter failed (checking normally)")
            return False

    def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            interval = self.poll_interval if self.backend == "poll" else self.sweep_interval
            self._sweep_now.wait(interval)
            self._sweep_now.clear()
            if self._stop.is_set():
                return
            try:
                if self._full_sweep:
                    self._full_sweep = False
                    self.scanner.forget_all()
                source = "poll" if self.backend == "poll" else "sweep"
                now = time.monotonic()
                own = os.getpid()
                for pid, _start in self.scanner.new_processes():
                    if pid != own:
                        self._offer(pid, source, now)
            except Exception:
                self._error()
                log.exception("process sweep error (continuing)")

    def _check_one(self, sighting: Sighting) -> None:
        """The checker's handler (on its thread)."""
        try:
            if self._stop.is_set():
                return  # stopping: what is still queued is re-offered by the next start's sweep
            self._check(sighting)
        except Exception:
            self._error()
            log.exception("process check failed for pid %s (continuing)", sighting.pid)
        finally:
            _close(sighting.pidfd)

    def _check(self, sighting: Sighting) -> None:
        want = self.want_sha256()
        facts = sighting.facts
        if facts is None:
            if self.enricher is not None:
                facts = self.enricher.facts(sighting.pid, with_sha256=False)
            else:
                facts = psutil_facts(sighting.pid, with_sha256=want)
        if facts is None:
            self.counts.add("vanished")
            return
        if want and facts.sha256 is None and facts.exe and self.enricher is not None:
            # Known digests are used at once; a file never hashed goes to the hasher, and the
            # process is judged now by everything else (names, paths, command line): name and
            # path enforcement never waits behind a large file being read.
            found = self._exe_path(facts)
            digest, size = self.enricher.hashes.cached(*found) if found else (None, -1)
            if digest is not None and found is not None and self._same_image(facts, *found):
                facts = replace(facts, sha256=digest)
            elif size >= 0 and sighting.source != "hash":
                self._queue_hash(sighting, facts, size)
        self.counts.add(sighting.source)
        self.scanner.mark(facts.pid, facts.start_time)
        self.handler(facts, sighting)

    # -- hashing, off the checker's thread ---------------------------------------------------
    def _queue_hash(self, sighting: Sighting, facts: ProcessFacts, size: int) -> None:
        """Hand the executable to the hasher (bounded: ``hash_queue`` files and ``hash_budget``
        bytes waiting); once hashed, the process is judged again with its digest."""
        with self._hash_lock:
            if self._hash_bytes + size > self.hash_budget:
                self.drops.add("hash_budget")
                return
            self._hash_bytes += size
        pidfd = -1
        if sighting.pidfd >= 0:
            try:
                pidfd = os.dup(sighting.pidfd)  # the hasher's own reference to the process
            except OSError:
                pidfd = -1
        job = Sighting(sighting.pid, "hash", sighting.observed, facts, pidfd)
        if not self.hasher.submit((job, size)):
            _close(pidfd)
            with self._hash_lock:
                self._hash_bytes -= size
            self.drops.add("hash_queue_full")

    def _hash_one(self, item: tuple[Sighting, int]) -> None:
        job, size = item
        try:
            if self._stop.is_set() or job.facts is None:
                return
            if job.pidfd >= 0 and not _alive(job.pidfd):
                return  # gone: nothing to judge
            digest = self._hash(job.facts)
            if digest is None:
                return
            again = replace(job, facts=replace(job.facts, sha256=digest))
            if self.submit(again):
                job = replace(job, pidfd=-1)  # the checker closes it now
        finally:
            with self._hash_lock:
                self._hash_bytes -= size
            _close(job.pidfd)

    def _exe_path(self, facts: ProcessFacts) -> tuple[Path, tuple[int, int] | None] | None:
        """What to hash, and the (device, inode) it must be: /proc/PID/exe (a deleted or renamed
        file still reads) with the identity the facts were read with, or FILE by its path for a
        program run through the dynamic loader (the exe is the loader's). The identity keeps a
        digest of another image from joining these facts: a fork sighting read just before the
        child's exec, say (that exec is judged on its own sighting). None when, without an
        identity, the link already names another file than the facts do."""
        assert self.enricher is not None
        link = self.enricher.procfs / str(facts.pid) / "exe"
        loaded = loaded_file(facts, self.enricher.procfs)
        if loaded is not None:
            return Path(loaded), None
        if facts.exe_id is not None:
            return link, facts.exe_id  # checked against the file actually read
        try:
            target = os.readlink(link)
        except OSError:
            return link, None  # gone: nothing reads through it
        return (link, None) if target == facts.exe else None

    def _same_image(self, facts: ProcessFacts, path: Path, expect: tuple[int, int] | None) -> bool:
        """After reading through ``path``: still the image of ``facts``. With an identity the
        read itself checked it; without one (facts not read from procfs) the link must still
        name the facts' file (a file renamed meanwhile is not judged by hash this time; the next
        sweep judges it again)."""
        assert self.enricher is not None
        if expect is not None or path != self.enricher.procfs / str(facts.pid) / "exe":
            return True
        try:
            return os.readlink(path) == facts.exe
        except OSError:
            return False

    def _hash(self, facts: ProcessFacts) -> str | None:
        """The executable's hash, read through /proc/PID/exe while it is still the same process
        running the same image."""
        assert self.enricher is not None
        found = self._exe_path(facts)
        if found is None:
            return None
        digest = self.enricher.hashes.digest(*found)
        if digest is None or not self._same_image(facts, *found):
            return None
        if self.enricher.start_time_of(facts.pid) != facts.start_time:
            return None  # the pid was reused while hashing: not this process's file
        return digest


def _alive(pidfd: int) -> bool:
    """Whether the pinned process still exists (a zombie counts: its pid is not free yet)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except OSError:
        return False
    return True


def _close(pidfd: int) -> None:
    if pidfd >= 0:
        try:
            os.close(pidfd)
        except OSError:
            pass
