"""Linux process connector: exec/comm/fork/exit events over NETLINK_CONNECTOR.

Parsing is pure over ``bytes`` (:func:`parse_messages`); :class:`ProcConnector` owns the socket.
Layout of one datagram (native byte order, see ``linux/netlink.h``, ``linux/connector.h`` and
``linux/cn_proc.h``)::

    nlmsghdr  len:u32 type:u16 flags:u16 seq:u32 pid:u32                    16 bytes
    cn_msg    idx:u32 val:u32 seq:u32 ack:u32 len:u16 flags:u16              20 bytes
    proc_event what:u32 cpu:u32 timestamp_ns:u64                            16 bytes
              event_data (union; first two u32 of exec/comm/exit are pid, tgid)

The kernel drops messages when the socket's receive buffer is full and reports it as
``ENOBUFS`` on the next ``recv``; :meth:`ProcConnector.read` reports that to the caller,
which counts it and sweeps ``/proc`` for what it missed. Needs CAP_NET_ADMIN in the initial
user and pid namespace.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PROC_EVENT_COMM",
    "PROC_EVENT_EXEC",
    "PROC_EVENT_EXIT",
    "PROC_EVENT_FORK",
    "ProcConnector",
    "ProcEvent",
    "parse_messages",
]

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3

PROC_EVENT_NONE: Final = 0x00000000
PROC_EVENT_FORK: Final = 0x00000001
PROC_EVENT_EXEC: Final = 0x00000002
PROC_EVENT_COMM: Final = 0x00000200
PROC_EVENT_EXIT: Final = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_PROC_EVENT = struct.Struct("=IIQ")
_TWO_U32 = struct.Struct("=II")
_FOUR_U32 = struct.Struct("=IIII")
_HEADERS = _NLMSGHDR.size + _CN_MSG.size
_RCVBUF = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProcEvent:
    what: int  # one of PROC_EVENT_*
    pid: int  # the thread the event is about (for fork: the child)
    tgid: int  # its process id (for fork: the child's)
    timestamp_ns: int  # kernel monotonic clock
    parent_tgid: int = 0  # fork only
    comm: str = ""  # comm only


def parse_messages(data: bytes) -> list[ProcEvent]:
    """Every proc event in one datagram; malformed or foreign messages are skipped."""
    events: list[ProcEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        if msg_type not in (NLMSG_NOOP, NLMSG_ERROR) and length >= _HEADERS + _PROC_EVENT.size:
            idx, val, _s, _a, payload_len, _f = _CN_MSG.unpack_from(data, offset + _NLMSGHDR.size)
            body = offset + _HEADERS
            if idx == CN_IDX_PROC and val == CN_VAL_PROC and payload_len >= _PROC_EVENT.size:
                event = _parse_event(data, body, min(payload_len, length - _HEADERS))
                if event is not None:
                    events.append(event)
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return events


def _parse_event(data: bytes, body: int, size: int) -> ProcEvent | None:
    what, _cpu, ts = _PROC_EVENT.unpack_from(data, body)
    ed = body + _PROC_EVENT.size
    room = size - _PROC_EVENT.size
    if what in (PROC_EVENT_EXEC, PROC_EVENT_EXIT) and room >= _TWO_U32.size:
        pid, tgid = _TWO_U32.unpack_from(data, ed)
        return ProcEvent(what, pid, tgid, ts)
    if what == PROC_EVENT_COMM and room >= _TWO_U32.size + 16:
        pid, tgid = _TWO_U32.unpack_from(data, ed)
        raw = data[ed + 8 : ed + 24].split(b"\0", 1)[0]
        return ProcEvent(what, pid, tgid, ts, comm=raw.decode("utf-8", "replace"))
    if what == PROC_EVENT_FORK and room >= _FOUR_U32.size:
        _ppid, ptgid, cpid, ctgid = _FOUR_U32.unpack_from(data, ed)
        return ProcEvent(what, cpid, ctgid, ts, parent_tgid=ptgid)
    return None


# Classic BPF run by the kernel on each message before it is queued: keep only exec and comm
# events and the fork events of new processes (not threads: child pid == child tgid), so exit
# events and thread creations (most of the traffic) never wake the agent nor fill the socket
# buffer. BPF_ABS loads are big-endian, the event code is host order: compare with the
# byte-swapped code (the pid comparison is an equality, so byte order does not matter).
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JEQ_X = 0x1D
_BPF_TAX = 0x07
_BPF_RET_K = 0x06
_SO_ATTACH_FILTER = 26
_WHAT_OFFSET = _HEADERS  # proc_event.what
_FORK_CHILD_PID = _HEADERS + 16 + 8  # after what, cpu, timestamp: parent pid, tgid, child pid
_FORK_CHILD_TGID = _FORK_CHILD_PID + 4


def _wire_code(what: int) -> int:
    return int.from_bytes(struct.pack("=I", what), "big")


def filter_program() -> list[tuple[int, int, int, int]]:
    return [
        (_BPF_LD_W_ABS, 0, 0, _WHAT_OFFSET),  # 0
        (_BPF_JEQ_K, 7, 0, _wire_code(PROC_EVENT_EXEC)),  # 1 -> 9 keep
        (_BPF_JEQ_K, 6, 0, _wire_code(PROC_EVENT_COMM)),  # 2 -> 9 keep
        (_BPF_JEQ_K, 0, 4, _wire_code(PROC_EVENT_FORK)),  # 3 -> 4, else 8 drop
        (_BPF_LD_W_ABS, 0, 0, _FORK_CHILD_PID),  # 4
        (_BPF_TAX, 0, 0, 0),  # 5
        (_BPF_LD_W_ABS, 0, 0, _FORK_CHILD_TGID),  # 6
        (_BPF_JEQ_X, 1, 0, 0),  # 7: a new process -> 9 keep, a thread -> 8 drop
        (_BPF_RET_K, 0, 0, 0),  # 8 drop
        (_BPF_RET_K, 0, 0, 0xFFFF),  # 9 keep (whole message)
    ]


def _attach_filter(sock: socket.socket) -> None:
    """Best effort: without the filter every event is delivered and parsed in Python."""
    import ctypes

    program = filter_program()
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        pass


def subscription_message(op: int = PROC_CN_MCAST_LISTEN, port: int = 0) -> bytes:
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn) + len(payload), NLMSG_DONE, 0, 0, port)
    return header + cn + payload


class ProcConnector:
    """A subscribed process-connector socket. ``OSError`` from :meth:`open` means unavailable."""

    def __init__(self, rcvbuf: int = _RCVBUF) -> None:
        self.rcvbuf = rcvbuf
        self._sock: socket.socket | None = None

    def open(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            try:  # FORCE ignores rmem_max, needs CAP_NET_ADMIN (which we need anyway)
                sock.setsockopt(socket.SOL_SOCKET, 33, self.rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            _attach_filter(sock)
            sock.bind((0, CN_IDX_PROC))
            port = sock.getsockname()[0]
            sock.send(subscription_message(PROC_CN_MCAST_LISTEN, port))
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def read(self, timeout: float) -> tuple[list[ProcEvent], bool]:
        """Events from every datagram ready within ``timeout``, and whether the kernel reported
        an overflow (ENOBUFS: events were lost) while reading them."""
        sock = self._sock
        if sock is None:
            raise OSError(errno.EBADF, "process connector is not open")
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            return [], False
        overflow = False
        events: list[ProcEvent] = []
        for _ in range(256):  # drain what is queued, but return regularly
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    overflow = True
                    continue
                raise
            events.extend(parse_messages(data))
        return events, overflow

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.send(subscription_message(PROC_CN_MCAST_IGNORE, sock.getsockname()[0]))
        except OSError:
            pass
        sock.close()
