"""Pre-exec deny with fanotify (Linux >= 5.0): a denied program never starts.

:class:`ExecDenyGuard` puts a ``FAN_OPEN_EXEC_PERM`` mark (``FAN_MARK_MOUNT``) on each mount it
is given. For every ``execve`` of a file on those mounts the kernel holds the caller and hands us
an fd on the file; the guard answers ``FAN_ALLOW`` or ``FAN_DENY`` (the ``execve`` fails with
``EPERM``).

Safety, because the kernel waits for the answer:

* every event is answered, from a ``finally``; a policy check that raises is answered ALLOW and
  counted (fail-open, like Santa's default);
* a check that takes longer than ``timeout_ms`` is answered ALLOW by a watchdog thread, which
  then starts a fresh reader so later execs are not held behind the stuck check; the stuck
  thread's late verdict is dropped. After ``max_stuck`` such threads, cache misses are allowed
  unchecked ("overload") until they return;
* the agent's own process and its own executable/interpreter are always allowed;
* only the listed mounts are marked, never ``/``; closing the fanotify fd (``stop()``, or the
  kernel when the agent dies) releases every pending exec.

The check runs on the reader thread itself (no hand-off on the hot path); a verdict cache
(:mod:`exec_verdicts`) makes a repeated exec of an allowed program cost one ``fstat``.
Changing the decider (a new policy) clears the cache.

Denials are reported through ``on_denied(request, verdict)`` on a separate thread after the
answer, so recording (a spool commit) never delays an exec; in monitor mode nothing is denied and
the callback gets a verdict with ``enforced=False`` (action ``would_block``).

The agent must not ``os.posix_spawn`` a program from a marked mount: CPython keeps the GIL while
the kernel waits for this guard's (Python) answer, a deadlock. ``subprocess`` releases it.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proscribe.agent.counters import Counters
from proscribe.agent.enforce.exec_verdicts import (
    ALLOW,
    MAX_HASH_BYTES,
    CacheKey,
    Decide,
    ExecRequest,
    ExecVerdict,
    OnDenied,
    VerdictCache,
    policy_decider,
    sha256_of_fd,
)
from proscribe.agent.sensors.enrich import ProcessIds, read_ids
from proscribe.agent.sensors.users import UserNames
from proscribe.agent.worker import BackgroundWorker
from proscribe.core.errors import ConfigError

if TYPE_CHECKING:
    from proscribe.agent.config import EnforceSection
    from proscribe.core.policy.matchers.compiled import CompiledPolicy

__all__ = [
    "CacheKey",
    "ExecDenyGuard",
    "ExecRequest",
    "ExecVerdict",
    "VerdictCache",
    "build_exec_guard",
    "check_mount",
    "policy_decider",
]

log = logging.getLogger(__name__)

_STATS = (
    "allowed",
    "denied",
    "would_block",
    "timeouts",
    "overloads",
    "errors",
    "cache_hits",
    "cache_misses",
    "self_allowed",
    "reports_dropped",
    "report_errors",
    "overflows",
)


def _protected_files(extra: Iterable[str]) -> set[tuple[int, int]]:
    """(dev, inode) of the agent's own executable and interpreter: never denied."""
    found: set[tuple[int, int]] = set()
    for path in (sys.executable, "/proc/self/exe", *extra):
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


@dataclass(slots=True)
class _Pending:
    """One permission event being judged by a reader; ``answered`` is guarded by the lock."""

    fd: int
    pid: int
    path: str
    deadline: float
    answered: bool = False


class ExecDenyGuard:
    """Answer ``FAN_OPEN_EXEC_PERM`` events on ``mounts`` with ``decide``'s verdicts."""

    def __init__(
        self,
        mounts: list[Path],
        decide: Decide,
        *,
        timeout_ms: int = 200,
        cache_size: int = 4096,
        cache_ttl: float = 60.0,
        mode: str = "enforce",
        on_denied: OnDenied | None = None,
        want_sha256: Callable[[], bool] = lambda: False,
        max_hash_bytes: int = MAX_HASH_BYTES,
        max_stuck: int = 4,
        procfs: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
        protect: Iterable[str] = (),
        users: UserNames | None = None,
    ) -> None:
        if mode not in ("enforce", "monitor"):
            raise ValueError(f"mode must be 'enforce' or 'monitor', not {mode!r}")
        self.mounts = [Path(m) for m in mounts]
        self.timeout = timeout_ms / 1000.0
        self.mode = mode
        self.want_sha256 = want_sha256
        self.max_hash_bytes = max_hash_bytes
        self.max_stuck = max(1, max_stuck)
        self.procfs = procfs
        self.cache = VerdictCache(cache_size, cache_ttl, clock)
        self.counts = Counters(_STATS)
        self.users = users if users is not None else UserNames()
        self._decide = decide
        self._on_denied = on_denied
        # Denials are recorded (a spool commit) off the reader thread, after the answer.
        self._reports: BackgroundWorker[tuple[ExecRequest, ExecVerdict]] | None = (
            BackgroundWorker(self._report, name="exec-deny-report", maxsize=1024)
            if on_denied is not None
            else None
        )
        self._protected = _protected_files(protect)
        self._self_pid = os.getpid()
        self._fan_fd = -1
        self._wake_r = self._wake_w = -1
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()
        # Guards _fan_fd writes, _pending, _generation and _stuck; the watchdog waits on it.
        self._cond = threading.Condition()
        self._pending: _Pending | None = None
        self._generation = 0  # the reader whose number this is may read; older ones exit
        self._stuck = 0  # superseded readers still inside a check

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the fanotify group and mark every mount; raises :class:`ConfigError`."""
        if not sys.platform.startswith("linux"):
            raise ConfigError("enforce.exec_deny_mounts: exec-deny needs Linux (fix: set it to [])")
        from proscribe.agent.enforce import _fanotify_linux as fan

        for mount in self.mounts:
            check_mount(mount)
        try:
            fd = fan.fanotify_init(
                fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK,
                os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC,
            )
        except OSError as err:
            raise ConfigError(
                f"enforce.exec_deny_mounts: fanotify_init failed: {err.strerror} (fix: run the "
                "agent as root on Linux >= 5.0, or set exec_deny_mounts = [])"
            ) from err
        try:
            for mount in self.mounts:
                fan.fanotify_mark(
                    fd, fan.FAN_MARK_ADD | fan.FAN_MARK_MOUNT, fan.FAN_OPEN_EXEC_PERM, str(mount)
                )
        except OSError as err:
            os.close(fd)
            raise ConfigError(
                f"enforce.exec_deny_mounts: cannot mark {err.strerror} (fix: list mount points "
                "that exist, on Linux >= 5.0)"
            ) from err
        self._fan_fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping.clear()
        if self._reports is not None:
            self._reports.start()
        self._watchdog = threading.Thread(
            target=self._watch, name="exec-deny-watchdog", daemon=True
        )
        self._watchdog.start()
        with self._cond:
            self._start_reader()
        shown = ", ".join(map(str, self.mounts))
        log.info("exec-deny: watching execs on %s (%s)", shown, self.mode)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering and close the group: the kernel allows anything still pending."""
        self._stopping.set()
        with self._cond:
            # A reader still inside a check must not answer on a closed (or reused) fd number.
            checking = self._pending is not None
            if self._pending is not None:
                self._pending.answered = True
            self._cond.notify_all()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._watchdog is not None:
            self._watchdog.join(timeout)
        if self._reader is not None:
            # A reader inside a check is not waited for long: its answer is void, and closing
            # the group below releases the exec it holds. It exits when the check returns.
            self._reader.join(0.2 if checking else timeout)
        self._reader = self._watchdog = None
        with self._cond:
            fds = (self._fan_fd, self._wake_r, self._wake_w)
            self._fan_fd = self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        if self._reports is not None:
            self._reports.stop(timeout)

    @property
    def running(self) -> bool:
        return self._reader is not None and not self._stopping.is_set()

    def set_decider(self, decide: Decide) -> None:
        """Judge with ``decide`` from now on (a new policy); cached verdicts are dropped."""
        self._decide = decide
        self.cache.clear()

    def stats(self) -> dict[str, Any]:
        counts = self.counts.snapshot()
        if self._reports is not None:
            counts["reports_dropped"] = sum(self._reports.drops.snapshot().values())
            counts["report_errors"] = self._reports.counts["errors"]
        out: dict[str, Any] = {k: counts.get(k, 0) for k in _STATS}
        answered = counts.get("answered", 0)
        mean_ns = counts.get("answer_ns", 0) / answered if answered else 0.0
        out["answered"] = answered
        out["mean_answer_us"] = round(mean_ns / 1e3, 1)
        out["max_answer_ms"] = round(counts.get("max_answer_ns", 0) / 1e6, 2)
        out["stuck_checks"] = self._stuck
        out["cache_size"] = len(self.cache)
        out["mounts"] = [str(m) for m in self.mounts]
        out["mode"] = self.mode
        out["running"] = self.running
        return out

    # -- readers and the watchdog -------------------------------------------------------------

    def _start_reader(self) -> None:
        """Called with the lock held."""
        self._generation += 1
        self._reader = threading.Thread(
            target=self._loop, args=(self._generation,), name="exec-deny", daemon=True
        )
        self._reader.start()

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stopping.is_set()

    def _watch(self) -> None:
        """Answer ALLOW for a check past its deadline and hand reading to a fresh thread."""
        while not self._stopping.is_set():
            try:
                self._watch_once()
            except Exception:
                self.counts.add("errors")
                log.exception("exec-deny: watchdog failed; restarting it")
                time.sleep(0.05)

    def _watch_once(self) -> None:
        with self._cond:
            while not self._stopping.is_set():
                pending = self._pending
                if pending is None:
                    self._cond.wait(1.0)
                    continue
                remaining = pending.deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._pending = None
                pending.answered = True
                self._stuck += 1
                self.counts.add("timeouts")
                self._respond(pending.fd, True)
                ms = self.timeout * 1e3
                log.warning(
                    "exec-deny: check of %s (pid %s) exceeded %.0f ms; allowed",
                    pending.path,
                    pending.pid,
                    ms,
                )
                self._start_reader()

    def _respond(self, fd: int, allow: bool) -> None:
        """Write one answer. Called with the lock held."""
        from proscribe.agent.enforce import _fanotify_linux as fan

        if self._fan_fd < 0:
            return
        try:
            os.write(self._fan_fd, fan.pack_response(fd, allow))
        except OSError as err:
            self.counts.add("errors")
            log.error("exec-deny: answering an exec failed: %s", err)

    def _loop(self, generation: int) -> None:
        from proscribe.agent.enforce import _fanotify_linux as fan

        poller = select.poll()
        poller.register(self._fan_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while self._current(generation):
            try:
                ready = poller.poll(1000)
            except InterruptedError:
                continue
            if not self._current(generation):
                break
            if not ready or all(fd != self._fan_fd for fd, _ in ready):
                continue
            try:
                # One event per read: if this thread is then stuck in a check, no other event
                # it read waits with it.
                buf = os.read(self._fan_fd, fan.METADATA.size)
            except BlockingIOError:
                continue  # another reader took it
            except OSError:
                self.counts.add("errors")
                log.exception("exec-deny: reading the fanotify fd failed")
                time.sleep(0.1)
                continue
            try:
                events = fan.parse_events(buf)
            except fan.MalformedEvent:
                # The fd inside cannot be found, so the event cannot be answered: give up the
                # group (closing it releases everything) rather than leave execs hanging.
                self.counts.add("errors")
                log.exception("exec-deny: malformed fanotify read; stopping the guard (fail-open)")
                with self._cond:
                    fd, self._fan_fd = self._fan_fd, -1
                self._stopping.set()
                os.close(fd)
                break
            for event in events:
                self._answer(fan, event, generation)

    def _answer(self, fan: Any, event: Any, generation: int) -> None:
        if event.mask & fan.FAN_Q_OVERFLOW or event.fd < 0:
            self.counts.add("overflows")
            return
        started = time.perf_counter_ns()
        pending = _Pending(event.fd, event.pid, "", 0.0)
        allow = True
        report: tuple[ExecRequest, ExecVerdict] | None = None
        try:
            if event.mask & fan.FAN_OPEN_EXEC_PERM:
                allow, report = self._judge(pending)
        except Exception:
            self.counts.add("errors")
            log.exception("exec-deny: judging pid %s failed; allowed", event.pid)
            allow = True
        finally:
            # Measured up to the answer: writing it may hand the CPU to the exec'ing process.
            took = time.perf_counter_ns() - started
            with self._cond:
                if self._pending is pending:
                    self._pending = None
                late = pending.answered
                if not late:
                    pending.answered = True
                    self._respond(event.fd, allow)
                elif generation != self._generation:
                    self._stuck -= 1
            os.close(event.fd)
            if not late:
                if report is not None:  # after the answer: recording never delays the exec
                    self._submit_report(report)
                self.counts.add("answered")
                self.counts.add("answer_ns", took)
                self.counts.raise_to("max_answer_ns", took)

    def _submit_report(self, report: tuple[ExecRequest, ExecVerdict]) -> None:
        if self._reports is None:
            _log_denial(*report)
        else:
            self._reports.submit(report)  # a full queue drops (counted in reports_dropped)

    def _report(self, report: tuple[ExecRequest, ExecVerdict]) -> None:
        _log_denial(*report)
        assert self._on_denied is not None
        self._on_denied(*report)

    def _judge(self, pending: _Pending) -> tuple[bool, tuple[ExecRequest, ExecVerdict] | None]:
        """(allow, what to report). A cache miss runs the check here, under the watchdog's
        deadline; the counters say what was answered unless the watchdog answered first."""
        fd, pid = pending.fd, pending.pid
        if pid == self._self_pid:
            self.counts.add("self_allowed")
            return True, None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in self._protected:
            self.counts.add("self_allowed")
            return True, None
        key = CacheKey.of(st)
        read: list[ProcessIds | None] = []

        def ids() -> ProcessIds | None:  # read at most once, and only when needed
            if not read:
                read.append(read_ids(pid, self.procfs))
            return read[0]

        def uid_of() -> int | None:
            found = ids()
            return None if found is None else found.uid

        verdict = self.cache.get(key, uid_of)
        request: ExecRequest | None = None
        if verdict is not None:
            self.counts.add("cache_hits")
            if not verdict.deny:
                self.counts.add("allowed")
                return True, None
            path = os.readlink(f"/proc/self/fd/{fd}")
        else:
            self.counts.add("cache_misses")
            if self._stuck >= self.max_stuck:
                self.counts.add("overloads")
                self.counts.add("allowed")
                return True, None
            path = os.readlink(f"/proc/self/fd/{fd}")
            pending.path = path
            pending.deadline = time.monotonic() + self.timeout
            with self._cond:
                self._pending = pending
                self._cond.notify_all()
            request, verdict = self._check(pending, pid, path, ids(), st)
            if pending.answered:  # too late: the watchdog allowed it; do not cache
                return True, None
            if verdict is None:
                self.counts.add("allowed")
                return True, None
            self.cache.put(key, verdict, uid_of())
        if not verdict.deny:
            self.counts.add("allowed")
            return True, None
        if request is None:
            request = self._request(pid, path, ids(), st)
        if self.mode == "monitor":
            self.counts.add("would_block")
            return True, (request, replace(verdict, enforced=False))
        self.counts.add("denied")
        return False, (request, verdict)

    def _request(
        self,
        pid: int,
        path: str,
        ids: ProcessIds | None,
        st: os.stat_result,
        sha256: str | None = None,
    ) -> ExecRequest:
        uid = None if ids is None else ids.uid
        return ExecRequest(
            pid=pid,
            path=path,
            uid=uid,
            user=self.users.name(uid),
            dev=st.st_dev,
            ino=st.st_ino,
            size=st.st_size,
            sha256=sha256,
            euid=None if ids is None else ids.euid,
        )

    def _check(
        self, pending: _Pending, pid: int, path: str, ids: ProcessIds | None, st: os.stat_result
    ) -> tuple[ExecRequest | None, ExecVerdict | None]:
        """The policy's verdict, or None when the check raised (allow; counted)."""
        try:
            digest = None
            if self.want_sha256():
                digest = sha256_of_fd(pending.fd, st.st_size, self.max_hash_bytes)
            request = self._request(pid, path, ids, st, digest)
            return request, self._decide(request)
        except Exception:
            if not pending.answered:
                self.counts.add("errors")
            log.exception("exec-deny: check of %s failed; allowed", path)
            return None, None


def check_mount(mount: Path) -> None:
    """Refuse ``/`` and anything that is not a mount point: a mark holds every exec under it."""
    if mount.resolve() == Path("/"):
        raise ConfigError(
            "enforce.exec_deny_mounts: '/' is refused: every program on the system would wait for "
            "the agent (fix: list dedicated mounts such as /opt or /home)"
        )
    if not os.path.ismount(mount):
        raise ConfigError(
            f"enforce.exec_deny_mounts: {mount} is not a mount point (fix: list mount points; "
            "see /proc/self/mounts)"
        )


# -- wiring for the daemon --------------------------------------------------------------------


def build_exec_guard(
    settings: EnforceSection,
    compiled_policy_getter: Callable[[], CompiledPolicy | None],
    on_denied: OnDenied | None,
    mode: str,
    *,
    host: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    users: UserNames | None = None,
) -> ExecDenyGuard | None:
    """The guard for the ``[enforce]`` keys ``exec_deny_mounts``, ``exec_deny_timeout_ms`` and
    ``exec_deny_cache_size`` (validated by the config loader; 0 = no verdict cache), or
    ``None`` when no mount is listed.

    Not started (:meth:`ExecDenyGuard.start` checks the mounts). The decider reads the policy in
    force on every cache miss; a policy change calls
    ``guard.set_decider(policy_decider(compiled, host))`` to drop cached verdicts. With no
    policy every exec is allowed.
    """
    if not settings.exec_deny_mounts:
        return None

    def decide(request: ExecRequest) -> ExecVerdict:
        compiled = compiled_policy_getter()
        if compiled is None:
            return ALLOW
        return policy_decider(compiled, host, now)(request)

    def want_sha256() -> bool:
        compiled = compiled_policy_getter()
        return compiled is not None and compiled.needs_sha256

    return ExecDenyGuard(
        [Path(m) for m in settings.exec_deny_mounts],
        decide,
        timeout_ms=settings.exec_deny_timeout_ms,
        cache_size=settings.exec_deny_cache_size,
        mode=mode,
        on_denied=on_denied,
        want_sha256=want_sha256,
        users=users,
    )


def _log_denial(request: ExecRequest, verdict: ExecVerdict) -> None:
    log.warning(
        "exec-deny: %s %s for pid %s: %s", verdict.action, request.path, request.pid, verdict.reason
    )
