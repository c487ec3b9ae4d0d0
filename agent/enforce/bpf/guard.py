"""The kernel exec guard: the BPF object of ``exec_guard.bpf.c`` loaded and fed from the policy.

:meth:`KernelExecGuard.open` loads the committed object (``exec_guard.bpf.o``) with libbpf and
attaches its programs; :class:`BpfUnavailable` says in one line why it cannot (not root, no BTF,
no libbpf, the kernel refused), and the agent then keeps the process sensor's kill as its only
enforcement. :meth:`apply` writes a :class:`~.plan.GuardPlan` into the maps (only the
differences); :meth:`learn_file` adds a file the agent judged by hash. A reader thread polls the
ring buffer and hands each :class:`KernelReport` to ``on_report``. :meth:`close` detaches
everything: nothing stays in the kernel after the agent stops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from proscribe.agent.enforce.bpf.libbpf import BpfObject, BpfUnavailable
from proscribe.agent.enforce.bpf.plan import NAME_LEN, FileId, GuardPlan

__all__ = ["BpfUnavailable", "KernelExecGuard", "KernelReport", "object_bytes"]

log = logging.getLogger(__name__)

OBJECT = "exec_guard.bpf.o"
# the executable-mapping hook, by preference: the program and the name shown in the stats
MMAP_HOOKS = {"mmap_lock": "guard_mmap", "sys_enter": "guard_mmap_syscall"}
FLAG_CHECK_CTIME = 1
KIND = {1: "exec", 2: "mmap"}
WHY = {1: "comm", 2: "exe_name", 3: "inode", 4: "loaded_name"}


class NameKey(ctypes.Structure):
    _fields_ = (("prefixlen", ctypes.c_uint32), ("data", ctypes.c_uint8 * NAME_LEN))


class Verdict(ctypes.Structure):
    _fields_ = (("rule", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("ctime", ctypes.c_int64))


class FileKey(ctypes.Structure):
    _fields_ = (("dev", ctypes.c_uint64), ("ino", ctypes.c_uint64))


class Settings(ctypes.Structure):
    _fields_ = (("kill", ctypes.c_uint32), ("agent_tgid", ctypes.c_uint32))


class Report(ctypes.Structure):
    _fields_ = (
        ("pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("why", ctypes.c_uint32),
        ("rule", ctypes.c_uint32),
        ("killed", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("dev", ctypes.c_uint64),
        ("ino", ctypes.c_uint64),
        ("ktime", ctypes.c_uint64),
        ("comm", ctypes.c_char * 16),
        ("name", ctypes.c_char * NAME_LEN),
        ("filename", ctypes.c_char * 256),
    )


@dataclass(frozen=True, slots=True)
class KernelReport:
    """One denial as the kernel saw it."""

    pid: int
    ppid: int
    uid: int
    kind: str  # "exec" (at exec) | "mmap" (an executable mapping: the loader case)
    why: str  # "comm" | "exe_name" | "inode" | "loaded_name"
    rule_id: str
    killed: bool
    dev: int
    ino: int
    boot_ns: int  # CLOCK_BOOTTIME of the denial, nanoseconds
    comm: str
    name: str  # the denied file's own name
    filename: str  # the path given to exec (empty for a mapping)


def object_bytes() -> bytes:
    return resources.files("proscribe.agent.enforce.bpf").joinpath(OBJECT).read_bytes()


def _name_key(name: str, *, exact: bool) -> NameKey:
    raw = name.encode("ascii")[: NAME_LEN - (1 if exact else 0)]
    key = NameKey()
    key.prefixlen = (len(raw) + (1 if exact else 0)) * 8
    ctypes.memmove(key.data, raw, len(raw))
    return key


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class KernelExecGuard:
    """The loaded guard. Thread-safety: :meth:`apply` and :meth:`learn_file` may be called
    from any thread (one lock); the reader thread only reads the ring buffer."""

    def __init__(self, obj: BpfObject, on_report: Callable[[KernelReport], None]) -> None:
        self._obj = obj
        self._on_report = on_report
        self._names = obj.map("names")
        self._inodes = obj.map("inodes")
        self._loaders = obj.map("loaders")
        self._settings = obj.map("settings")
        self._lock = threading.Lock()
        self._rules: list[str] = []
        self._in_names: dict[tuple[str, bool], int] = {}
        self._in_files: dict[FileId, tuple[int, int, int]] = {}  # -> (rule, flags, ctime)
        self._learned: dict[FileId, tuple[str, int]] = {}  # -> (rule id, ctime) from hashes
        self.plan = GuardPlan()
        self.applied_at: float | None = None
        self.reports = 0
        self.lost_rules = 0
        self._stop = threading.Event()
        self._ring = obj.ring_buffer("reports", self._record)
        self._thread: threading.Thread | None = None
        self.attached_at = time.clock_gettime(time.CLOCK_BOOTTIME)  # as /proc's start times
        self.mmap_hook = ""  # "mmap_lock" | "sys_enter": where the mapping check runs
        self.mmap_hook_detail = ""  # why not mmap_lock, when it fell back

    @classmethod
    def open(
        cls,
        on_report: Callable[[KernelReport], None],
        *,
        kill: bool = True,
        mmap_hook: str = "auto",
    ) -> KernelExecGuard:
        """Load, configure and attach; :class:`BpfUnavailable` with the reason otherwise.

        ``mmap_hook``: ``auto`` attaches the executable-mapping check to the
        ``mmap_lock_start_locking`` tracepoint and, only where the kernel refuses that, to
        ``sys_enter`` (every system call pays for it); ``mmap_lock`` or ``sys_enter`` force one
        (tests and the bench). :attr:`mmap_hook` says which is in use."""
        if not sys.platform.startswith("linux"):
            raise BpfUnavailable(f"not Linux ({sys.platform})")
        if os.geteuid() != 0:
            raise BpfUnavailable("not running as root")
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            raise BpfUnavailable("the kernel has no BTF (/sys/kernel/btf/vmlinux)")
        if os.uname().machine != "x86_64":
            raise BpfUnavailable(f"the guard is built for x86_64, not {os.uname().machine}")
        if mmap_hook not in ("auto", *MMAP_HOOKS):
            raise ValueError(f"mmap_hook: {mmap_hook!r} (auto, mmap_lock or sys_enter)")
        hooks = list(MMAP_HOOKS) if mmap_hook == "auto" else [mmap_hook]
        first: BpfUnavailable | None = None
        for hook in hooks:
            try:
                guard = cls._open(on_report, kill, hook)
            except BpfUnavailable as err:
                first = first or err
                continue
            if first is not None:
                guard.mmap_hook_detail = f"{hooks[0]} refused: {first}"
                log.warning(
                    "kernel exec guard: loader check on sys_enter, every system call pays (%s)",
                    guard.mmap_hook_detail,
                )
            return guard
        assert first is not None
        raise first

    @classmethod
    def _open(
        cls, on_report: Callable[[KernelReport], None], kill: bool, hook: str
    ) -> KernelExecGuard:
        program = MMAP_HOOKS[hook]
        others = tuple(p for p in MMAP_HOOKS.values() if p != program)
        obj = BpfObject(object_bytes(), name=OBJECT, skip=others)
        try:
            guard = cls(obj, on_report)
            guard.set_kill(kill)
            obj.attach("guard_exec")
            obj.attach(program)
        except BaseException:
            obj.close()
            raise
        guard.mmap_hook = hook
        guard.attached_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        return guard

    # -- maps -----------------------------------------------------------------------------
    def set_kill(self, kill: bool) -> None:
        self._settings.update(ctypes.c_uint32(0), Settings(int(kill), os.getpid()))

    def set_loaders(self, loaders: dict[FileId, str]) -> None:
        with self._lock:
            for key in self._loaders.keys(FileKey):
                self._loaders.delete(key)
            for fid in loaders:
                self._loaders.update(FileKey(fid.dev, fid.ino), ctypes.c_uint32(1))

    def apply(self, plan: GuardPlan) -> None:
        """Make the maps hold ``plan`` (plus the learned hashes of rules still in it)."""
        with self._lock:
            try:
                self._apply(plan)
            except BaseException:
                # the maps hold part of it: claim nothing, the process sensor judges everything
                self.plan = GuardPlan()
                self._learned.clear()
                raise

    def _apply(self, plan: GuardPlan) -> None:
        self.plan = plan
        self._rules = list(plan.rules)
        want_names = {(n, True): r for n, r in plan.exact.items()}
        want_names.update({(n, False): r for n, r in plan.prefixes.items()})
        for (name, exact), rule in want_names.items():
            if self._in_names.get((name, exact)) != rule:
                self._names.update(_name_key(name, exact=exact), Verdict(rule, 0, 0))
        for name, exact in set(self._in_names) - set(want_names):
            self._names.delete(_name_key(name, exact=exact))
        self._in_names = want_names
        # a learned file keeps its rule by id (numbers change with the policy); a rule that is
        # no longer the kernel's to apply forgets its files
        self._learned = {f: v for f, v in self._learned.items() if v[0] in self._rules}
        learned = {
            fid: (self._rules.index(rule_id), FLAG_CHECK_CTIME, ctime)
            for fid, (rule_id, ctime) in self._learned.items()
        }
        want_files = {**learned, **{fid: (r, 0, 0) for fid, (r, _p) in plan.files.items()}}
        self._write_files(want_files)
        self.applied_at = time.monotonic()

    def _write_files(self, want: dict[FileId, tuple[int, int, int]]) -> None:
        for fid, value in want.items():
            if self._in_files.get(fid) != value:
                self._inodes.update(FileKey(fid.dev, fid.ino), Verdict(*value))
        for fid in set(self._in_files) - set(want):
            self._inodes.delete(FileKey(fid.dev, fid.ino))
        self._in_files = want

    def learn_file(self, fid: FileId, rule_id: str, ctime: int) -> bool:
        """Deny ``fid`` in the kernel from now on (its hash matched ``rule_id``) while its
        ctime stays ``ctime`` (nanoseconds); False when the rule is not the kernel's to apply."""
        with self._lock:
            if rule_id not in self._rules:
                return False
            rule = self._rules.index(rule_id)
            if self._learned.get(fid) == (rule_id, ctime):
                return True
            self._learned[fid] = (rule_id, ctime)
            if fid not in self.plan.files:
                value = (rule, FLAG_CHECK_CTIME, ctime)
                self._inodes.update(FileKey(fid.dev, fid.ino), Verdict(*value))
                self._in_files[fid] = value
            return True

    def covers(self, exe_name: str, fid: FileId | None, ctime_ns: int | None = None) -> bool:
        """Whether the kernel denies an exec of this file: by its own name, by its identity
        (path rules), or as a learned hash while its ctime is still ``ctime_ns``."""
        plan = self.plan
        if exe_name and plan.covers_name(exe_name) is not None:
            return True
        if fid is None:
            return False
        if fid in plan.files:
            return True
        learned = self._learned.get(fid)
        return learned is not None and learned[1] == ctime_ns

    # -- reports --------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._read, name="proscribe-bpf-reports", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            rc = self._ring.poll(200)
            if rc < 0:
                log.error("BPF ring buffer poll failed (%s); stopping the reader", rc)
                return

    def _record(self, data: bytes) -> None:
        raw = Report.from_buffer_copy(data.ljust(ctypes.sizeof(Report), b"\0"))
        self.reports += 1
        rules = self._rules
        rule_id = rules[raw.rule] if raw.rule < len(rules) else ""
        if not rule_id:
            self.lost_rules += 1
        self._on_report(
            KernelReport(
                pid=raw.pid,
                ppid=raw.ppid,
                uid=raw.uid,
                kind=KIND.get(raw.kind, str(raw.kind)),
                why=WHY.get(raw.why, str(raw.why)),
                rule_id=rule_id,
                killed=bool(raw.killed),
                dev=raw.dev,
                ino=raw.ino,
                boot_ns=raw.ktime,
                comm=_text(raw.comm),
                name=_text(raw.name),
                filename=_text(raw.filename),
            )
        )

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def program_fds(self) -> dict[str, int]:
        """The attached programs' file descriptors, by name (the bench reads their run-time
        statistics)."""
        names = ("guard_exec", MMAP_HOOKS[self.mmap_hook])
        return {name: self._obj.program_fd(name) for name in names}

    def stats(self) -> dict[str, Any]:
        return {
            **self.plan.summary(),
            "learned_files": len(self._learned),
            "mmap_hook": self.mmap_hook,
            **({"mmap_hook_detail": self.mmap_hook_detail} if self.mmap_hook_detail else {}),
            "reports": self.reports,
            "reader": "running" if self.alive() else "stopped",
        }

    def close(self, timeout: float = 2.0) -> None:
        """Stop the reader, detach the programs and unload (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._ring.close()
        self._obj.close()
