"""fanotify(7) through libc, for the exec-deny guard (Linux only).

Only what the guard needs: a permission-class group (``fanotify_init``), mount marks
(``fanotify_mark``), event parsing and the allow/deny answer. Parsing is pure over ``bytes``
(:func:`parse_events`, :func:`pack_response`) so it is unit-tested without a kernel.

Constants are from ``include/uapi/linux/fanotify.h``; ``FAN_OPEN_EXEC_PERM`` needs Linux 5.0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

__all__ = [
    "FAN_ALLOW",
    "FAN_CLASS_CONTENT",
    "FAN_CLASS_PRE_CONTENT",
    "FAN_CLOEXEC",
    "FAN_DENY",
    "FAN_MARK_ADD",
    "FAN_MARK_MOUNT",
    "FAN_MARK_REMOVE",
    "FAN_NOFD",
    "FAN_NONBLOCK",
    "FAN_OPEN_EXEC_PERM",
    "FAN_Q_OVERFLOW",
    "METADATA",
    "FanotifyEvent",
    "MalformedEvent",
    "fanotify_init",
    "fanotify_mark",
    "pack_response",
    "parse_events",
]

# fanotify_init flags
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_CLASS_PRE_CONTENT = 0x00000008

# fanotify_mark flags
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_MOUNT = 0x00000010

# event mask bits
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_Q_OVERFLOW = 0x00004000

# responses
FAN_ALLOW = 0x01
FAN_DENY = 0x02

FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100

# struct fanotify_event_metadata {u32 event_len; u8 vers; u8 reserved; u16 metadata_len;
#                                 aligned_u64 mask; s32 fd; s32 pid;}
METADATA = struct.Struct("=IBBHQii")
# struct fanotify_response {s32 fd; u32 response;}
RESPONSE = struct.Struct("=iI")


class MalformedEvent(ValueError):
    """The buffer read from the fanotify fd does not hold well-formed events."""


@dataclass(frozen=True, slots=True)
class FanotifyEvent:
    mask: int
    fd: int  # an O_RDONLY fd on the object, owned by the reader; FAN_NOFD on overflow
    pid: int  # thread-group id of the process that caused the event


def parse_events(buf: bytes) -> list[FanotifyEvent]:
    """Every event in one ``read()`` of a fanotify fd (the kernel never splits an event)."""
    events: list[FanotifyEvent] = []
    offset = 0
    while offset < len(buf):
        if len(buf) - offset < METADATA.size:
            raise MalformedEvent(f"truncated event header at offset {offset}")
        event_len, vers, _reserved, _meta_len, mask, fd, pid = METADATA.unpack_from(buf, offset)
        if vers != FANOTIFY_METADATA_VERSION:
            raise MalformedEvent(
                f"fanotify metadata version {vers}, expected {FANOTIFY_METADATA_VERSION}"
            )
        if event_len < METADATA.size or offset + event_len > len(buf):
            raise MalformedEvent(f"bad event_len {event_len} at offset {offset}")
        events.append(FanotifyEvent(mask=mask, fd=fd, pid=pid))
        offset += event_len
    return events


def pack_response(fd: int, allow: bool) -> bytes:
    """The answer to one permission event, written to the fanotify fd."""
    return RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY)


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        lib.fanotify_mark.restype = ctypes.c_int
        _libc = lib
    return _libc


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """A new fanotify group fd; raises ``OSError`` (EPERM without CAP_SYS_ADMIN, EINVAL when
    the kernel lacks a flag)."""
    fd = int(_lib().fanotify_init(flags, event_f_flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_init: {os.strerror(err)}")
    return fd


def fanotify_mark(fan_fd: int, flags: int, mask: int, path: str) -> None:
    """Add or remove a mark; raises ``OSError`` naming the path."""
    rc = int(_lib().fanotify_mark(fan_fd, flags, mask, AT_FDCWD, os.fsencode(path)))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_mark {path}: {os.strerror(err)}")
