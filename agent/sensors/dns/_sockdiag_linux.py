"""NETLINK_SOCK_DIAG exact lookups: a socket's inode and uid from its 4-tuple in one round trip.

Much cheaper than reading ``/proc/net/udp`` (tens of microseconds instead of a text dump of
every socket), which matters in the proxy, where attribution sits in the reply path. Only
lookups of sockets in the caller's network namespace are possible.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x01
NLMSG_ERROR = 0x02
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
_SOCKID = struct.Struct("!HH16s16s")  # ports and addresses are big-endian
_SOCKID_TAIL = struct.Struct("=III")  # if, cookie[2]
_NOCOOKIE = 0xFFFFFFFF
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_SOCKID_SIZE = 48
_V4_MAPPED = bytes(10) + b"\xff\xff"


def _packed(ip: str, family: int) -> bytes:
    """16 bytes for the request; socket.inet_pton because ipaddress costs ~10 µs a call."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip)
    if family == socket.AF_INET6:
        return _V4_MAPPED + socket.inet_pton(socket.AF_INET, ip)
    return socket.inet_pton(socket.AF_INET, ip) + bytes(12)


class SockDiag:
    """One netlink socket; ``lookup`` is thread-safe (serialized)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self._sock.settimeout(1.0)
        self._lock = threading.Lock()
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def lookup(
        self, transport: str, local: tuple[str, int], remote: tuple[str, int]
    ) -> tuple[int, int] | None:
        """``(inode, uid)`` of the socket at ``local`` talking to ``remote``, or ``None``."""
        proto = socket.IPPROTO_UDP if transport == "udp" else socket.IPPROTO_TCP
        v4 = ":" not in local[0]
        families = (socket.AF_INET, socket.AF_INET6) if v4 else (socket.AF_INET6,)
        for family in families:
            found = self._lookup_one(family, proto, local, remote)
            if found is not None:
                return found
        return None

    def _lookup_one(
        self, family: int, proto: int, local: tuple[str, int], remote: tuple[str, int]
    ) -> tuple[int, int] | None:
        if proto == socket.IPPROTO_UDP:
            # udp_dump_one looks the socket up as if receiving a packet: src is the peer.
            src, dst = remote, local
        else:
            src, dst = local, remote
        sockid = _SOCKID.pack(
            src[1], dst[1], _packed(src[0], family), _packed(dst[0], family)
        ) + _SOCKID_TAIL.pack(0, _NOCOOKIE, _NOCOOKIE)
        body = _REQ.pack(family, proto, 0, 0, 0xFFFFFFFF) + sockid
        with self._lock:
            self._seq += 1
            seq = self._seq
            header = _NLMSGHDR.pack(
                _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0
            )
            self._sock.send(header + body)
            while True:
                data = self._sock.recv(8192)
                _length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data)
                if got_seq == seq:
                    break
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, _NLMSGHDR.size)[0]
            if -code in (errno.ENOENT, 0):
                return None
            raise OSError(-code, os.strerror(-code))
        offset = _NLMSGHDR.size + _MSG_HEAD.size + _SOCKID_SIZE
        _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(data, offset)
        return (inode, uid) if inode else None
