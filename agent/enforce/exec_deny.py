"""Pre-exec deny with fanotify (Linux ≥ 5.0): a denied program never starts.

:class:`ExecDenyGuard` puts a ``FAN_OPEN_EXEC_PERM`` mark (``FAN_MARK_MOUNT``) on each mount it
is given. For every ``execve`` of a file on those mounts the kernel holds the caller and hands us
an fd on the file; the guard answers ``FAN_ALLOW`` or ``FAN_DENY`` (the ``execve`` fails with
``EPERM``).

Safety, because the kernel waits for the answer:

* every event is answered, from a ``finally``; a policy check that raises, or takes longer than
  ``timeout_ms``, is answered ALLOW and counted (fail-open, like Santa's default); checks run on
  a small pool of worker threads so a stuck check cannot hold the reader, and when all workers
  are busy new checks are not queued but allowed at once ("overload");
* the agent's own process and its own executable/interpreter are always allowed;
* only the listed mounts are marked, never ``/``; closing the fanotify fd (``stop()``, or the
  kernel when the agent dies) releases every pending exec.

Verdicts are cached by file identity — (dev, inode, mtime, size) as REFERENCE.md §5 asks, plus
ctime (changes on rename, link, chmod and any write, even one that restores mtime), the path
(name and path globs judge it, and a hard link or a renamed directory keeps the inode) and the
caller's uid (exemptions can be per user) — with a TTL, because exemptions expire. Changing the
decider (a new policy) clears the cache.

Denials are reported through ``on_denied(request, verdict)`` on a separate thread after the
answer, so recording (a spool commit) never delays an exec; in monitor mode nothing is denied and
the callback gets a verdict with ``enforced=False`` (action ``would_block``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import pwd
import queue
import select
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proscribe.agent.errors import ConfigError

if TYPE_CHECKING:
    from proscribe.agent.policy.matchers.compiled import CompiledPolicy, Decision

__all__ = [
    "CacheKey",
    "ExecDenyGuard",
    "ExecRequest",
    "Verdict",
    "VerdictCache",
    "build_exec_guard",
    "policy_decider",
]

log = logging.getLogger(__name__)

MAX_HASH_BYTES = 256 * 1024 * 1024  # larger executables are judged without a hash
_HASH_CHUNK = 1024 * 1024
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class CacheKey:
    dev: int
    ino: int
    mtime_ns: int
    size: int
    ctime_ns: int
    path: str
    uid: int | None

    @classmethod
    def of(cls, st: os.stat_result, path: str, uid: int | None) -> CacheKey:
        return cls(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns, path, uid)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """A program about to run. ``argv`` is not known yet: the kernel asks before exec."""

    pid: int  # the process calling execve (it becomes the new program)
    path: str  # the executable, resolved by the kernel
    uid: int | None  # real uid of the caller; None if it exited
    user: str
    dev: int
    ino: int
    size: int
    sha256: str | None = None  # only when the policy needs hashes and the file is small enough


@dataclass(frozen=True, slots=True)
class Verdict:
    deny: bool
    reason: str = ""  # the explanation shown in logs and events
    rule_id: str | None = None
    decisions: tuple[Decision, ...] = ()
    enforced: bool = True  # False in monitor mode: the exec was allowed anyway

    @property
    def action(self) -> str:
        """The event action: ``denied`` where the exec failed, ``would_block`` in monitor mode."""
        return "denied" if self.enforced else "would_block"


Decide = Callable[[ExecRequest], Verdict]
OnDenied = Callable[[ExecRequest, Verdict], None]
ALLOW = Verdict(deny=False)


class VerdictCache:
    """LRU of verdicts by :class:`CacheKey`, each valid for ``ttl`` seconds. Thread-safe."""

    def __init__(
        self, capacity: int = 4096, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.clock = clock
        self._items: OrderedDict[CacheKey, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Verdict | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if self.clock() >= item[0]:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: CacheKey, verdict: Verdict) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = (self.clock() + self.ttl, verdict)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def read_uid(pid: int, procfs: Path) -> int | None:
    """The uid owning ``/proc/PID``: the process's effective uid (root for a non-dumpable
    process). One ``stat``: reading ``/proc/PID/status`` costs several times more per exec."""
    try:
        return os.stat(f"{procfs}/{pid}").st_uid
    except OSError:
        return None


_users: dict[int, str] = {}


def user_name(uid: int | None) -> str:
    if uid is None:
        return ""
    name = _users.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _users[uid] = name
    return name


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


class _Workers:
    """Daemon threads running policy checks, so a hung check never blocks interpreter exit."""

    def __init__(self, count: int) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self.busy = 0
        self.count = count
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"exec-deny-check-{i}", daemon=True)
            for i in range(count)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any] | None:
        with self._lock:
            if self.busy >= self.count:
                return None
            self.busy += 1
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fut, fn))
        return fut

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn = job
            try:
                fut.set_result(fn())
            except BaseException as err:
                fut.set_exception(err)
            finally:
                with self._lock:
                    self.busy -= 1

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


@dataclass(slots=True)
class _Reports:
    """Bounded queue of denials for ``on_denied``; drops are counted, never block the reader."""

    on_denied: OnDenied | None
    counts: Counter[str]
    items: queue.Queue[tuple[ExecRequest, Verdict] | None] = field(
        default_factory=lambda: queue.Queue(maxsize=1024)
    )
    thread: threading.Thread | None = None

    def start(self) -> None:
        if self.on_denied is not None:
            self.thread = threading.Thread(target=self._run, name="exec-deny-report", daemon=True)
            self.thread.start()

    def submit(self, request: ExecRequest, verdict: Verdict) -> None:
        if self.thread is None:
            log.warning(
                "exec-deny: %s %s for pid %s: %s",
                verdict.action,
                request.path,
                request.pid,
                verdict.reason,
            )
            return
        try:
            self.items.put_nowait((request, verdict))
        except queue.Full:
            self.counts["reports_dropped"] += 1

    def _run(self) -> None:
        assert self.on_denied is not None
        while (item := self.items.get()) is not None:
            request, verdict = item
            log.warning(
                "exec-deny: %s %s for pid %s: %s",
                verdict.action,
                request.path,
                request.pid,
                verdict.reason,
            )
            try:
                self.on_denied(request, verdict)
            except Exception:
                self.counts["report_errors"] += 1
                log.exception("exec-deny: on_denied failed for %s", item[0].path)

    def stop(self, timeout: float) -> None:
        if self.thread is not None:
            self.items.put(None)
            self.thread.join(timeout)
            self.thread = None


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
        workers: int = 2,
        procfs: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
        protect: Iterable[str] = (),
    ) -> None:
        if mode not in ("enforce", "monitor"):
            raise ValueError(f"mode must be 'enforce' or 'monitor', not {mode!r}")
        self.mounts = [Path(m) for m in mounts]
        self.timeout = timeout_ms / 1000.0
        self.mode = mode
        self.want_sha256 = want_sha256
        self.max_hash_bytes = max_hash_bytes
        self.procfs = procfs
        self.cache = VerdictCache(cache_size, cache_ttl, clock)
        self.counts: Counter[str] = Counter()
        self._decide = decide
        self._reports = _Reports(on_denied, self.counts)
        self._workers_count = max(1, workers)
        self._workers: _Workers | None = None
        self._protected = _protected_files(protect)
        self._self_pid = os.getpid()
        self._fan_fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

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
        self._workers = _Workers(self._workers_count)
        self._reports.start()
        self._thread = threading.Thread(target=self._loop, name="exec-deny", daemon=True)
        self._thread.start()
        log.info(
            "exec-deny: watching execs on %s (%s)", ", ".join(map(str, self.mounts)), self.mode
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering and close the group: the kernel allows anything still pending."""
        self._stopping.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for fd in (self._fan_fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fan_fd = self._wake_r = self._wake_w = -1
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None
        self._reports.stop(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_decider(self, decide: Decide) -> None:
        """Judge with ``decide`` from now on (a new policy); cached verdicts are dropped."""
        self._decide = decide
        self.cache.clear()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: self.counts[k]
            for k in (
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
        }
        answered = self.counts["answered"]
        out["answered"] = answered
        out["mean_answer_us"] = (
            round(self.counts["answer_ns"] / answered / 1e3, 1) if answered else 0.0
        )
        out["max_answer_ms"] = round(self.counts["max_answer_ns"] / 1e6, 2)
        out["cache_size"] = len(self.cache)
        out["mounts"] = [str(m) for m in self.mounts]
        out["mode"] = self.mode
        out["running"] = self.running
        return out

    # -- the reader ---------------------------------------------------------------------------

    def _loop(self) -> None:
        from proscribe.agent.enforce import _fanotify_linux as fan

        poller = select.poll()
        poller.register(self._fan_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping.is_set():
            try:
                ready = poller.poll(1000)
            except InterruptedError:
                continue
            if self._stopping.is_set():
                break
            if not any(fd == self._fan_fd for fd, _ in ready):
                continue
            try:
                buf = os.read(self._fan_fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                self.counts["errors"] += 1
                log.exception("exec-deny: reading the fanotify fd failed")
                time.sleep(0.1)
                continue
            try:
                events = fan.parse_events(buf)
            except fan.MalformedEvent:
                # The fds inside cannot be found, so the events cannot be answered: give up the
                # group (closing it releases them) rather than leave execs hanging.
                self.counts["errors"] += 1
                log.exception("exec-deny: malformed fanotify read; stopping the guard (fail-open)")
                break
            for event in events:
                self._answer(fan, event)
        if self._fan_fd >= 0 and not self._stopping.is_set():
            os.close(self._fan_fd)
            self._fan_fd = -1

    def _answer(self, fan: Any, event: Any) -> None:
        if event.mask & fan.FAN_Q_OVERFLOW or event.fd < 0:
            self.counts["overflows"] += 1
            return
        started = time.perf_counter_ns()
        allow = True
        try:
            if event.mask & fan.FAN_OPEN_EXEC_PERM:
                allow = self._judge(event.fd, event.pid)
        except Exception:
            self.counts["errors"] += 1
            log.exception("exec-deny: judging pid %s failed; allowed", event.pid)
            allow = True
        finally:
            # Measured up to the answer: writing it may hand the CPU to the exec'ing process.
            took = time.perf_counter_ns() - started
            try:
                os.write(self._fan_fd, fan.pack_response(event.fd, allow))
            except OSError as err:
                self.counts["errors"] += 1
                log.error("exec-deny: answering pid %s failed: %s", event.pid, err)
            os.close(event.fd)
            self.counts["answered"] += 1
            self.counts["answer_ns"] += took
            self.counts["max_answer_ns"] = max(self.counts["max_answer_ns"], took)

    def _judge(self, fd: int, pid: int) -> bool:
        """True to allow. Runs on the reader thread; only cache misses go to a worker."""
        if pid == self._self_pid:
            self.counts["self_allowed"] += 1
            return True
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in self._protected:
            self.counts["self_allowed"] += 1
            return True
        path = os.readlink(f"/proc/self/fd/{fd}")
        uid = read_uid(pid, self.procfs)
        key = CacheKey.of(st, path, uid)
        verdict = self.cache.get(key)
        request: ExecRequest | None = None
        if verdict is not None:
            self.counts["cache_hits"] += 1
        else:
            self.counts["cache_misses"] += 1
            judged = self._check_bounded(fd, pid, path, uid, st)
            if judged is None:
                self.counts["allowed"] += 1
                return True
            request, verdict = judged
            self.cache.put(key, verdict)
        if not verdict.deny:
            self.counts["allowed"] += 1
            return True
        if request is None:
            request = ExecRequest(pid, path, uid, user_name(uid), st.st_dev, st.st_ino, st.st_size)
        if self.mode == "monitor":
            self.counts["would_block"] += 1
            self._reports.submit(request, replace(verdict, enforced=False))
            return True
        self.counts["denied"] += 1
        self._reports.submit(request, verdict)
        return False

    def _check_bounded(
        self, fd: int, pid: int, path: str, uid: int | None, st: os.stat_result
    ) -> tuple[ExecRequest, Verdict] | None:
        """The policy's verdict within the timeout, or None (allow; counted)."""
        assert self._workers is not None
        decide = self._decide
        want_hash = self.want_sha256()
        # The worker gets its own fd: after a timeout the event fd is closed and its number may be
        # reused, while a late check may still be hashing.
        own_fd = os.dup(fd)

        def check() -> tuple[ExecRequest, Verdict]:
            try:
                digest = (
                    sha256_of_fd(own_fd, st.st_size, self.max_hash_bytes) if want_hash else None
                )
                request = ExecRequest(
                    pid, path, uid, user_name(uid), st.st_dev, st.st_ino, st.st_size, digest
                )
                return request, decide(request)
            finally:
                os.close(own_fd)

        fut = self._workers.submit(check)
        if fut is None:
            os.close(own_fd)
            self.counts["overloads"] += 1
            log.warning("exec-deny: every check is busy; allowed %s for pid %s", path, pid)
            return None
        try:
            result: tuple[ExecRequest, Verdict] = fut.result(self.timeout)
            return result
        except concurrent.futures.TimeoutError:
            self.counts["timeouts"] += 1
            log.warning(
                "exec-deny: check of %s exceeded %.0f ms; allowed", path, self.timeout * 1e3
            )
        except Exception:
            self.counts["errors"] += 1
            log.exception("exec-deny: check of %s failed; allowed", path)
        return None


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
    from proscribe.agent.policy.matchers.process import COMM_MAX, ProcessFacts, basename

    def decide(request: ExecRequest) -> Verdict:
        facts = ProcessFacts(
            pid=request.pid,
            name=basename(request.path)[:COMM_MAX],
            exe=request.path,
            user=request.user,
            uid=request.uid,
            sha256=request.sha256,
        )
        decisions = tuple(compiled.check_process(facts, host, now()))
        for d in decisions:
            if d.action == "block" and d.exempted_by is None:
                return Verdict(True, f"rule {d.rule_id}: {d.explanation}", d.rule_id, decisions)
        return Verdict(False, decisions=decisions) if decisions else ALLOW

    return decide


def build_exec_guard(
    section: Mapping[str, Any],
    compiled_policy_getter: Callable[[], CompiledPolicy | None],
    on_denied: OnDenied | None,
    mode: str,
    *,
    host: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ExecDenyGuard | None:
    """The guard for the ``[enforce]`` keys ``exec_deny_mounts`` (list of mount points; empty or
    missing = off), ``exec_deny_timeout_ms`` (200) and ``exec_deny_cache_size`` (4096).

    Not started. The decider reads the policy in force on every cache miss; the daemon calls
    ``guard.set_decider(policy_decider(compiled, host))`` on a policy change to drop cached
    verdicts. With no policy every exec is allowed.
    """
    mounts = section.get("exec_deny_mounts") or []
    if not isinstance(mounts, list) or not all(isinstance(m, str) and m for m in mounts):
        raise ConfigError(
            "enforce.exec_deny_mounts: expected a list of mount point paths "
            '(fix: exec_deny_mounts = ["/opt"])'
        )
    if not mounts:
        return None
    timeout_ms = _positive_int(section, "exec_deny_timeout_ms", 200, 10, 5000)
    cache_size = _positive_int(section, "exec_deny_cache_size", 4096, 0, 1_000_000)
    for m in mounts:
        check_mount(Path(m))

    def decide(request: ExecRequest) -> Verdict:
        compiled = compiled_policy_getter()
        if compiled is None:
            return ALLOW
        return policy_decider(compiled, host, now)(request)

    def want_sha256() -> bool:
        compiled = compiled_policy_getter()
        return compiled is not None and compiled.needs_sha256

    return ExecDenyGuard(
        [Path(m) for m in mounts],
        decide,
        timeout_ms=timeout_ms,
        cache_size=cache_size,
        mode=mode,
        on_denied=on_denied,
        want_sha256=want_sha256,
    )


def _positive_int(section: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"enforce.{key}: expected an integer from {low} to {high}, got {value!r} "
            f"(fix: {key} = {default})"
        )
    return value
