"""nfnetlink_queue over a raw netlink socket: packets the agent's nftables rules queue to it.

Used for encrypted-DNS attempts (``dns_redirect.py`` queues the first packet of every
connection to port 853 and to the DoH resolvers' port 443): the agent reads the packet while
the sender's socket is still connecting (so it can be attributed exactly), then hands it back
with ``NF_REPEAT`` and a mark, and the next pass through the chain rejects it (TCP reset /
ICMP port-unreachable) so the client falls back to port 53 at once. The queue is bound with
``fail-open`` and the rule with ``bypass``: with no reader, or a full queue, packets pass.

Only what that needs: bind one queue, copy the first ``copy_range`` bytes with the sender's
uid/gid, read packets, send verdicts with a mark.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["NF_ACCEPT", "NF_DROP", "NF_REPEAT", "NfLog", "NfQueue", "QueuedPacket"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_FLAGS = 5
NFQA_CFG_MASK = 4
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_UID_GID = 1 << 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_PAYLOAD = 10
NFQA_UID = 16
NF_DROP, NF_ACCEPT, NF_REPEAT = 0, 1, 4
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian on the wire)
_NLATTR = struct.Struct("=HH")


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        found[kind & 0x7FFF] = data[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def _nfnl_messages(data: bytes, wanted: int) -> Iterator[tuple[int, dict[int, bytes]]]:
    """``(family, attributes)`` of each netfilter netlink message of type ``wanted`` in one
    receive; a truncated header ends the walk."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return
        if kind == wanted:
            family = data[offset + _NLMSGHDR.size]
            yield family, _attrs(data[: offset + length], offset + _NLMSGHDR.size + _NFGENMSG.size)
        offset += (length + 3) & ~3


def _uid(raw: bytes | None) -> int | None:
    return struct.unpack("!I", raw)[0] if raw and len(raw) == 4 else None


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    packet_id: int
    family: int  # socket.AF_INET or AF_INET6
    payload: bytes  # the IP packet from its header, at most copy_range bytes
    uid: int | None  # the sending socket's owner, when the kernel knows it


class NfQueue:
    """One bound queue. ``read()`` blocks up to the socket timeout; not thread-safe."""

    def __init__(self, queue: int, *, copy_range: int = 128, timeout: float = 0.5) -> None:
        self.queue = queue
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._seq = 0
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(2.0)
            self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET)))
            flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_UID_GID
            self._config(
                _attr(NFQA_CFG_FLAGS, struct.pack("!I", flags))
                + _attr(NFQA_CFG_MASK, struct.pack("!I", flags))
            )
            self._sock.settimeout(timeout)
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _message(self, kind: int, body: bytes, flags: int = NLM_F_REQUEST) -> int:
        self._seq += 1
        header = _NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(self.queue))
        payload = header + body
        self._sock.send(
            _NLMSGHDR.pack(
                _NLMSGHDR.size + len(payload),
                (NFNL_SUBSYS_QUEUE << 8) | kind,
                flags,
                self._seq,
                0,
            )
            + payload
        )
        return self._seq

    def _config(self, body: bytes) -> None:
        seq = self._message(NFQNL_MSG_CONFIG, body, NLM_F_REQUEST | NLM_F_ACK)
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_ERROR and got_seq == seq:
                    code = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                    if code:
                        raise OSError(-code, f"nfnetlink_queue config: {os.strerror(-code)}")
                    return
                offset += max(length, _NLMSGHDR.size)

    def read(self) -> list[QueuedPacket]:
        """The packets of one receive (empty on timeout)."""
        try:
            data = self._sock.recv(262144)
        except TimeoutError:
            return []
        packets: list[QueuedPacket] = []
        for family, attrs in _nfnl_messages(data, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET):
            header = attrs.get(NFQA_PACKET_HDR)
            if header is not None and len(header) >= 4:
                packets.append(
                    QueuedPacket(
                        struct.unpack_from("!I", header)[0],
                        family,
                        attrs.get(NFQA_PAYLOAD, b""),
                        _uid(attrs.get(NFQA_UID)),
                    )
                )
        return packets

    def verdict(self, packet_id: int, verdict: int, mark: int | None = None) -> None:
        body = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
        if mark is not None:
            body += _attr(NFQA_MARK, struct.pack("!I", mark))
        self._message(NFQNL_MSG_VERDICT, body)


NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NFULA_UID = 11


class NfLog(NfQueue):
    """nfnetlink_log: the same packets copied to a log group, for kernels without nftables'
    ``queue`` expression (``CONFIG_NFT_QUEUE`` unset). The kernel rejects on its own; there
    is no verdict to give (``verdict`` does nothing) and the sender's socket may be closed
    by the time the copy is read, so attribution can miss; the uid comes with the copy."""

    def __init__(self, group: int, *, copy_range: int = 128, timeout: float = 0.5) -> None:
        self.queue = group
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._seq = 0
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(2.0)
            self._config(_attr(NFULA_CFG_CMD, struct.pack("!B", NFULNL_CFG_CMD_BIND)))
            self._config(
                _attr(NFULA_CFG_MODE, struct.pack("!IBx", copy_range, NFULNL_COPY_PACKET))
                + _attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1))  # each packet at once
            )
            self._sock.settimeout(timeout)
        except BaseException:
            self._sock.close()
            raise

    def _message(self, kind: int, body: bytes, flags: int = NLM_F_REQUEST) -> int:
        self._seq += 1
        header = _NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(self.queue))
        payload = header + body
        self._sock.send(
            _NLMSGHDR.pack(
                _NLMSGHDR.size + len(payload),
                (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                flags,
                self._seq,
                0,
            )
            + payload
        )
        return self._seq

    def read(self) -> list[QueuedPacket]:
        try:
            data = self._sock.recv(262144)
        except TimeoutError:
            return []
        packets: list[QueuedPacket] = []
        for family, attrs in _nfnl_messages(data, (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET):
            packets.append(
                QueuedPacket(-1, family, attrs.get(NFULA_PAYLOAD, b""), _uid(attrs.get(NFULA_UID)))
            )
        return packets

    def verdict(self, packet_id: int, verdict: int, mark: int | None = None) -> None:
        return None
