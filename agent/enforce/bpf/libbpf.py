"""A small, generic binding of Debian's ``libbpf.so.1`` through ctypes.

Enough to load a compiled BPF object from memory, reach its maps by name, attach its programs
where their section names say (``raw_tracepoint/…``, ``kprobe/…``, ``tracepoint/…``) or to
a cgroup (``cgroup/…``, ``cgroup_skb/…``) and read a
ring buffer. Nothing here knows what the programs do: the exec guard
(:mod:`proscribe.agent.enforce.bpf.guard`) and the DNS sender map
(:mod:`proscribe.agent.sensors.dns.sender_map`) build on it.

Every failure is a :class:`BpfUnavailable` carrying one line saying what failed and why
(``errno`` text), so a caller can fall back and show the reason in ``agent status``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
from collections.abc import Callable

__all__ = [
    "BpfObject",
    "BpfUnavailable",
    "Map",
    "RingBuffer",
    "enable_run_time_stats",
    "load_libbpf",
]

log = logging.getLogger(__name__)

_SONAMES = ("libbpf.so.1",)


class BpfUnavailable(Exception):
    """BPF cannot be used here; the message says why in one line."""


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def _quiet_print(level: int, fmt: bytes | None, args: int | None) -> int:
    """libbpf's messages are not printed (they are varargs, unreadable from ctypes); the
    error codes returned say what failed."""
    return 0


_quiet = _PRINT_FN(_quiet_print)


def _declare(lib: ctypes.CDLL) -> None:
    vp, c_int, c_size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    sigs: dict[str, tuple[object, list[object]]] = {
        "libbpf_set_print": (vp, [_PRINT_FN]),
        "bpf_object__open_mem": (vp, [vp, c_size, vp]),
        "bpf_object__load": (c_int, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_program__set_autoload": (c_int, [vp, ctypes.c_bool]),
        "bpf_program__fd": (c_int, [vp]),
        "bpf_enable_stats": (c_int, [c_int]),
        "bpf_map__fd": (c_int, [vp]),
        "bpf_program__attach": (vp, [vp]),
        "bpf_program__attach_cgroup": (vp, [vp, c_int]),
        "bpf_link__destroy": (c_int, [vp]),
        "bpf_map_update_elem": (c_int, [c_int, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, vp, vp]),
        "bpf_map_delete_elem": (c_int, [c_int, vp]),
        "bpf_map_get_next_key": (c_int, [c_int, vp, vp]),
        "ring_buffer__new": (vp, [c_int, _SAMPLE_FN, vp, vp]),
        "ring_buffer__poll": (c_int, [vp, c_int]),
        "ring_buffer__free": (None, [vp]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def load_libbpf() -> ctypes.CDLL:
    """The shared library, loaded once; :class:`BpfUnavailable` when it is not installed."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        last = ""
        for name in (*_SONAMES, ctypes.util.find_library("bpf")):
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError as err:
                last = str(err)
                continue
            try:
                _declare(lib)
            except AttributeError as err:
                raise BpfUnavailable(
                    f"{name} is too old (missing {err}); libbpf 1.x needed"
                ) from err
            lib.libbpf_set_print(_quiet)
            _lib = lib
            return lib
        raise BpfUnavailable(
            f"libbpf.so.1 not found ({last or 'not installed'}; fix: apt-get install libbpf1)"
        )


def _why(code: int) -> str:
    code = abs(code) or ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})" if code else "unknown"


class Map:
    """One map of a loaded object, by its file descriptor; keys and values are ctypes
    structures (or any object with a buffer) of the map's sizes."""

    def __init__(self, lib: ctypes.CDLL, name: str, fd: int) -> None:
        self._lib = lib
        self.name = name
        self.fd = fd

    def update(self, key: ctypes._CData, value: ctypes._CData, flags: int = 0) -> None:
        rc = self._lib.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags)
        if rc != 0:
            raise OSError(abs(rc), f"map {self.name}: update failed: {_why(rc)}")

    def lookup(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        rc: int = self._lib.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        return rc == 0

    def delete(self, key: ctypes._CData) -> bool:
        rc: int = self._lib.bpf_map_delete_elem(self.fd, ctypes.byref(key))
        return rc == 0

    def keys(self, key_type: type[ctypes._CData]) -> list[ctypes._CData]:
        found: list[ctypes._CData] = []
        previous: ctypes._CData | None = None
        while True:
            nxt = key_type()
            rc = self._lib.bpf_map_get_next_key(
                self.fd, None if previous is None else ctypes.byref(previous), ctypes.byref(nxt)
            )
            if rc != 0:
                return found
            found.append(nxt)
            previous = nxt


class RingBuffer:
    """A BPF ring buffer read by :meth:`poll`; ``on_record`` gets each record's bytes."""

    def __init__(self, lib: ctypes.CDLL, ring: Map, on_record: Callable[[bytes], None]) -> None:
        self._lib = lib
        self._on_record = on_record

        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            if data is None:
                return 0
            try:
                self._on_record(ctypes.string_at(data, size))
            except Exception:  # a callback error must not unwind through C
                log.exception("ring buffer record handler failed (continuing)")
            return 0

        self._sample = _SAMPLE_FN(sample)  # kept alive as long as the buffer
        ptr = lib.ring_buffer__new(ring.fd, self._sample, None, None)
        if not ptr:
            raise BpfUnavailable(f"ring buffer on map {ring.name}: {_why(0)}")
        self._ptr: int | None = ptr

    def poll(self, timeout_ms: int) -> int:
        """Records handled (>= 0); negative errno on error (EINTR is not an error)."""
        if self._ptr is None:
            return 0
        rc: int = self._lib.ring_buffer__poll(self._ptr, timeout_ms)
        return 0 if rc == -errno.EINTR else rc

    def close(self) -> None:
        if self._ptr is not None:
            self._lib.ring_buffer__free(self._ptr)
            self._ptr = None


def enable_run_time_stats() -> int:
    """Make the kernel count every BPF program's runs and run time (``run_cnt``,
    ``run_time_ns``) for as long as the returned file descriptor is open: a setting of the
    whole host, which costs every program two clock reads per run (benchmarks only)."""
    lib = load_libbpf()
    fd: int = lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    if fd < 0:
        raise BpfUnavailable(f"cannot enable BPF run-time statistics: {_why(fd)}")
    return fd


class BpfObject:
    """A compiled BPF object opened from bytes and loaded into the kernel (CO-RE relocations
    resolved against the running kernel's BTF); :meth:`attach` attaches programs by name,
    :meth:`close` detaches them all and unloads. The programs named in ``skip`` are not
    loaded (the kernel never sees them; attaching one fails)."""

    def __init__(
        self, data: bytes, *, name: str = "bpf object", skip: tuple[str, ...] = ()
    ) -> None:
        self.lib = load_libbpf()
        self.name = name
        # libbpf keeps pointing into the buffer while the object lives
        self._buffer = ctypes.create_string_buffer(data, len(data))
        ctypes.set_errno(0)
        obj = self.lib.bpf_object__open_mem(self._buffer, len(data), None)
        if not obj:
            raise BpfUnavailable(f"{name}: cannot open: {_why(0)}")
        self._obj: int | None = obj
        self._links: list[int] = []
        for program in skip:
            ptr = self.lib.bpf_object__find_program_by_name(obj, program.encode())
            if not ptr or self.lib.bpf_program__set_autoload(ptr, False) != 0:
                self.close()
                raise BpfUnavailable(f"{name}: cannot leave out program {program!r}")
        ctypes.set_errno(0)
        rc = self.lib.bpf_object__load(obj)
        if rc != 0:
            self.close()
            raise BpfUnavailable(f"{name}: the kernel refused to load it: {_why(rc)}")

    def map(self, name: str) -> Map:
        ptr = self.lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise BpfUnavailable(f"{self.name}: no map named {name!r}")
        return Map(self.lib, name, self.lib.bpf_map__fd(ptr))

    def attach(self, program: str) -> None:
        ptr = self.lib.bpf_object__find_program_by_name(self._obj, program.encode())
        if not ptr:
            raise BpfUnavailable(f"{self.name}: no program named {program!r}")
        ctypes.set_errno(0)
        link = self.lib.bpf_program__attach(ptr)
        if not link:
            raise BpfUnavailable(f"{self.name}: cannot attach {program}: {_why(0)}")
        self._links.append(link)

    def program_fd(self, program: str) -> int:
        """The file descriptor of a loaded program (its ``/proc/self/fdinfo`` shows its
        run-time statistics while :func:`enable_run_time_stats` is in force)."""
        ptr = self.lib.bpf_object__find_program_by_name(self._obj, program.encode())
        fd: int = self.lib.bpf_program__fd(ptr) if ptr else -1
        if fd < 0:
            raise BpfUnavailable(f"{self.name}: no loaded program named {program!r}")
        return fd

    def attach_cgroup(self, program: str, cgroup_fd: int) -> None:
        """Attach a ``cgroup/…`` or ``cgroup_skb/…`` program to the cgroup v2 directory open
        as ``cgroup_fd`` (a link: detached by :meth:`close` or when this process exits)."""
        ptr = self.lib.bpf_object__find_program_by_name(self._obj, program.encode())
        if not ptr:
            raise BpfUnavailable(f"{self.name}: no program named {program!r}")
        ctypes.set_errno(0)
        link = self.lib.bpf_program__attach_cgroup(ptr, cgroup_fd)
        if not link:
            raise BpfUnavailable(f"{self.name}: cannot attach {program} to the cgroup: {_why(0)}")
        self._links.append(link)

    def ring_buffer(self, map_name: str, on_record: Callable[[bytes], None]) -> RingBuffer:
        return RingBuffer(self.lib, self.map(map_name), on_record)

    def detach(self) -> None:
        """Detach every program; the object stays loaded with its maps (:meth:`attach` again)."""
        for link in reversed(self._links):
            self.lib.bpf_link__destroy(link)
        self._links.clear()

    def close(self) -> None:
        """Detach every program and unload the object (idempotent)."""
        self.detach()
        if self._obj is not None:
            self.lib.bpf_object__close(self._obj)
            self._obj = None
