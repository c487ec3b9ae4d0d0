"""Encrypted DNS attempts the nftables rules queue to the agent: attribute, reject, report.

In enforce mode with ``[sensors] dns = "auto"`` (``agent/enforce/dns_redirect.py``), the first
packet of every connection to port 853 (DNS over TLS / QUIC) and to port 443 of a known DoH
resolver is queued here. :class:`EncryptedDnsBlocker` reads it while the sender's socket is
still connecting — which is why even a connection that fails at once is attributed to its
process — hands it back with the reject mark (the kernel then answers TCP reset or ICMP
port-unreachable, so the client falls back to port 53 at once) and reports the attempt with
``blocked=True``.

TCP to port 853 is told apart by what the client says, not by the port: DNS over TLS and DNS
over HTTPS can both be served there. Its handshake is let through and the rules act on the
connection's first packet that carries data, the TLS ClientHello, which names the application
protocol it wants (ALPN, RFC 7301): ``dot`` is DoT, ``h2``/``http/1.1`` is DoH, no ALPN is DoT
(RFC 7858 clients need not send one). That packet is rejected (TCP reset, so no TLS byte
reaches the resolver and the client falls back at once); the connection's SYN was seen first
and attributed while the socket connected. A connection that never sends data (refused, timed
out) is reported ``_HOLD_SECONDS`` after its SYN, labelled DoT by its port. UDP to 853 is DoQ;
port 443 of a DoH resolver is DoH (TCP, or UDP for HTTP/3): those are rejected on their first
packet as before.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proscribe.agent.counters import Counters
from proscribe.agent.sensors.dns.encrypted import DOT_PORT, EncryptedDnsConnection

__all__ = [
    "EncryptedDnsBlocker",
    "IpPacket",
    "client_hello_alpn",
    "label_tls_853",
    "parse_ip_packet",
    "read_ip_packet",
]

log = logging.getLogger(__name__)

Attribute = Callable[
    [str, tuple[str, int], tuple[str, int]], tuple[dict[str, Any] | None, str | None]
]
_NF_ACCEPT = 1
# bytes of each packet copied to the agent: IP and TCP headers and a ClientHello (loopback's
# MTU fits a whole one in one segment; 1,500-byte links split a post-quantum one at ~1,400)
_COPY_RANGE = 4096
_NF_REPEAT = 4
_HOLD_SECONDS = 2.0  # how long a port-853 SYN waits for its ClientHello before it is reported
_MAX_HELD = 4096  # connections waiting for their ClientHello; the oldest is reported first
_HTTP_ALPN = frozenset({"h2", "http/1.1", "http/1.0", "h3"})
_TLS_HANDSHAKE, _CLIENT_HELLO, _ALPN_EXTENSION = 0x16, 0x01, 16


@dataclass(frozen=True, slots=True)
class IpPacket:
    """What the blocker needs from one IPv4/IPv6 TCP or UDP packet."""

    transport: str  # "tcp" | "udp"
    local: tuple[str, int]
    remote: tuple[str, int]
    data_length: int  # bytes after the TCP/UDP header, from the IP header (not the copy)
    data: bytes  # those bytes as far as the copy goes


def client_hello_alpn(data: bytes) -> tuple[str, ...] | None:
    """The application protocols a TLS ClientHello offers (ALPN), in its order; ``()`` when it
    has no ALPN extension; ``None`` when ``data`` is not the start of a ClientHello or ends
    before its ALPN or its last extension (a ClientHello split over segments)."""
    try:
        if data[0] != _TLS_HANDSHAKE or data[5] != _CLIENT_HELLO:
            return None
        hello_end = 9 + int.from_bytes(data[6:9], "big")
        offset = 9 + 2 + 32  # type, length, client_version, random
        offset += 1 + data[offset]  # session id
        offset += 2 + int.from_bytes(data[offset : offset + 2], "big")  # cipher suites
        offset += 1 + data[offset]  # compression methods
        if offset >= hello_end:
            return () if offset <= len(data) else None  # no extensions at all
        extensions_end = offset + 2 + int.from_bytes(data[offset : offset + 2], "big")
        offset += 2
        while offset + 4 <= min(extensions_end, len(data)):
            kind = int.from_bytes(data[offset : offset + 2], "big")
            size = int.from_bytes(data[offset + 2 : offset + 4], "big")
            offset += 4
            if kind == _ALPN_EXTENSION:
                if offset + size > len(data):
                    return None
                names: list[str] = []
                position = offset + 2
                while position < offset + size:
                    length = data[position]
                    names.append(
                        data[position + 1 : position + 1 + length].decode("ascii", "replace")
                    )
                    position += 1 + length
                return tuple(names)
            offset += size
        return () if extensions_end <= len(data) else None
    except IndexError:
        return None


def label_tls_853(alpn: tuple[str, ...] | None) -> str:
    """DoT or DoH for a TLS connection to port 853, by its ClientHello's ALPN: an HTTP
    protocol and no ``dot`` is DoH; ``dot``, no ALPN, or no ClientHello seen is DoT."""
    if alpn and "dot" not in alpn and any(name in _HTTP_ALPN for name in alpn):
        return "DoH"
    return "DoT"


@dataclass(slots=True)
class _Held:
    """A port-853 TCP connection seen at its SYN, waiting for its ClientHello."""

    process: dict[str, Any] | None
    reason: str | None
    uid: int | None
    time: float
    deadline: float


class _Queue(Protocol):
    def read(self) -> list[Any]: ...
    def verdict(self, packet_id: int, verdict: int, mark: int | None = None) -> None: ...
    def close(self) -> None: ...


def parse_ip_packet(
    family: int, payload: bytes
) -> tuple[str, tuple[str, int], tuple[str, int]] | None:
    """``(transport, source, destination)`` of an IPv4/IPv6 TCP or UDP packet, else None."""
    packet = read_ip_packet(family, payload)
    return None if packet is None else (packet.transport, packet.local, packet.remote)


def read_ip_packet(family: int, payload: bytes) -> IpPacket | None:
    """An IPv4/IPv6 TCP or UDP packet (IPv6 without extension headers), else None."""
    try:
        if family == socket.AF_INET or (payload and payload[0] >> 4 == 4):
            ihl = (payload[0] & 0x0F) * 4
            total = struct.unpack_from("!H", payload, 2)[0]
            proto = payload[9]
            src_ip = socket.inet_ntop(socket.AF_INET, payload[12:16])
            dst_ip = socket.inet_ntop(socket.AF_INET, payload[16:20])
            offset = ihl
        else:
            total = 40 + struct.unpack_from("!H", payload, 4)[0]
            proto = payload[6]
            src_ip = str(ipaddress.IPv6Address(payload[8:24]))
            dst_ip = str(ipaddress.IPv6Address(payload[24:40]))
            offset = 40
        if proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            return None
        sport, dport = struct.unpack_from("!HH", payload, offset)
        if proto == socket.IPPROTO_TCP:
            header = (payload[offset + 12] >> 4) * 4
            header = max(header, 20)
        else:
            header = 8
    except (IndexError, struct.error, ValueError):
        return None
    start = offset + header
    return IpPacket(
        "tcp" if proto == socket.IPPROTO_TCP else "udp",
        (src_ip, sport),
        (dst_ip, dport),
        max(0, total - start),
        payload[start:total],
    )


class EncryptedDnsBlocker:
    def __init__(
        self,
        on_connection: Callable[[EncryptedDnsConnection], None],
        attribute: Attribute,
        *,
        queue: int,
        reject_mark: int,
        resolvers: Mapping[str, str],
        open_queue: Callable[[int], _Queue] | None = None,
        clock: Callable[[], float] = time.time,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self._on_stop = on_stop
        self._on_connection = on_connection
        self._attribute = attribute
        self.queue = queue
        self._reject_mark = reject_mark
        self._resolvers = resolvers
        self._open_queue = open_queue
        self._clock = clock
        self._queue: _Queue | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = Counters(
            ("queued", "rejected", "not_parsed", "callback_errors", "tls_read", "no_client_hello")
        )
        self.log_only = False
        # port-853 TCP connections seen at their SYN, by (local, remote), until the ClientHello
        self._held: dict[tuple[tuple[str, int], tuple[str, int]], _Held] = {}
        self._monotonic = time.monotonic

    def start(self, *, log_only: bool = False) -> None:
        """Bind the queue (``OSError`` when it cannot) and start reading it. ``log_only``:
        read copies from NFLOG group ``queue`` instead (the kernel rejects on its own)."""
        self.log_only = log_only
        if self._open_queue is not None:
            self._queue = self._open_queue(self.queue)
        elif log_only:
            from proscribe.agent.sensors.dns._nfqueue_linux import NfLog

            self._queue = NfLog(self.queue, copy_range=_COPY_RANGE)
        else:
            from proscribe.agent.sensors.dns._nfqueue_linux import NfQueue

            self._queue = NfQueue(self.queue, copy_range=_COPY_RANGE)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="dns-encrypted", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0, *, final: bool = True) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._queue is not None:
            self._queue.close()
            self._queue = None
        if final and self._on_stop is not None:
            self._on_stop()

    def stats(self) -> dict[str, Any]:
        return {**self.counts.snapshot(), "mode": "log" if self.log_only else "queue"}

    def _loop(self) -> None:
        queue = self._queue
        assert queue is not None
        while not self._stopping.is_set():
            try:
                packets = queue.read()
            except OSError:
                if self._stopping.is_set():
                    return
                log.warning("encrypted DNS queue read failed", exc_info=True)
                time.sleep(0.2)
                continue
            for packet in packets:
                try:
                    self.handle(queue, packet)
                except Exception:
                    log.exception("encrypted DNS: unexpected error on one packet")
                    queue.verdict(packet.packet_id, _NF_REPEAT, self._reject_mark)
            try:
                self.report_expired()
            except Exception:
                log.exception("encrypted DNS: reporting held connections failed")

    def handle(self, queue: _Queue, packet: Any) -> None:
        """Attribute, hand back (to be rejected, or a port-853 SYN to go on), then report (the
        client is not kept waiting for the report)."""
        self.counts.add("queued")
        parsed = read_ip_packet(packet.family, packet.payload)
        if parsed is None:
            self.counts.add("not_parsed")
            queue.verdict(packet.packet_id, _NF_REPEAT, self._reject_mark)
            return
        transport, local, remote = parsed.transport, parsed.local, parsed.remote
        tls_853 = transport == "tcp" and remote[1] == DOT_PORT
        key = (local, remote)
        if tls_853 and parsed.data_length == 0:
            # the SYN: attribute while the socket connects, let the handshake go on, and wait
            # for the ClientHello to say which protocol this is
            process, reason = self._attribute(transport, local, remote)
            queue.verdict(packet.packet_id, _NF_ACCEPT)
            self._hold(key, _Held(process, reason, packet.uid, self._clock(), 0.0))
            return
        held = self._held.pop(key, None) if tls_853 else None
        if held is not None:
            process, reason, uid, when = held.process, held.reason, held.uid, held.time
            if process is None:  # the socket is still open now: try again
                process, again = self._attribute(transport, local, remote)
                reason = reason if process is None else again
        else:
            process, reason = self._attribute(transport, local, remote)
            uid, when = packet.uid, self._clock()
        queue.verdict(packet.packet_id, _NF_REPEAT, self._reject_mark)
        self.counts.add("rejected")
        alpn: tuple[str, ...] | None = None
        if tls_853:
            alpn = client_hello_alpn(parsed.data)
            protocol = label_tls_853(alpn)
            self.counts.add("tls_read" if alpn is not None else "no_client_hello")
        elif remote[1] == DOT_PORT:
            protocol = "DoQ"
        else:
            protocol = "DoH"
        self._report(protocol, local, remote, process, reason, uid, when, alpn)

    def _hold(self, key: tuple[tuple[str, int], tuple[str, int]], held: _Held) -> None:
        held.deadline = self._monotonic() + _HOLD_SECONDS
        self._held.pop(key, None)
        self._held[key] = held
        while len(self._held) > _MAX_HELD:
            oldest = next(iter(self._held))
            self._report_held(oldest, self._held.pop(oldest))

    def report_expired(self) -> None:
        """Report the port-853 connections whose ClientHello did not come in time (refused,
        timed out, or never sent one): DoT, by their port."""
        if not self._held:
            return
        now = self._monotonic()
        for key in [key for key, held in self._held.items() if held.deadline <= now]:
            self._report_held(key, self._held.pop(key))

    def _report_held(self, key: tuple[tuple[str, int], tuple[str, int]], held: _Held) -> None:
        self.counts.add("no_client_hello")
        local, remote = key
        self._report("DoT", local, remote, held.process, held.reason, held.uid, held.time, None)

    def _report(
        self,
        protocol: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        process: dict[str, Any] | None,
        reason: str | None,
        uid: int | None,
        when: float,
        alpn: tuple[str, ...] | None,
    ) -> None:
        if process is None and uid is not None:
            reason = f"{reason or 'unknown'}; the socket belonged to uid {uid}"
        connection = EncryptedDnsConnection(
            protocol=protocol,
            resolver=remote,
            provider=self._resolvers.get(remote[0]) or None,
            local=local,
            process=process,
            attribution_reason=None if process else reason,
            time=when,
            blocked=True,
            alpn=alpn,
        )
        try:
            self._on_connection(connection)
        except Exception:
            self.counts.add("callback_errors")
            log.exception("encrypted DNS callback failed")
