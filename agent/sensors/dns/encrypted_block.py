"""Encrypted DNS attempts the nftables rules queue to the agent: attribute, reject, report.

In enforce mode with ``[sensors] dns = "auto"`` (``agent/enforce/dns_redirect.py``), the first
packet of every connection to port 853 (DNS over TLS / QUIC) and to port 443 of a known DoH
resolver is queued here. :class:`EncryptedDnsBlocker` reads it while the sender's socket is
still connecting — which is why even a connection that fails at once is attributed to its
process — hands it back with the reject mark (the kernel then answers TCP reset or ICMP
port-unreachable, so the client falls back to port 53 at once) and reports the attempt with
``blocked=True``. Labels are by destination: port 853 over TCP is DoT, over UDP DoQ; port 443
of a DoH resolver is DoH (TCP, or UDP for HTTP/3).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from proscribe.agent.counters import Counters
from proscribe.agent.sensors.dns.encrypted import DOH_PORT, DOT_PORT, EncryptedDnsConnection

__all__ = ["EncryptedDnsBlocker", "parse_ip_packet"]

log = logging.getLogger(__name__)

Attribute = Callable[
    [str, tuple[str, int], tuple[str, int]], tuple[dict[str, Any] | None, str | None]
]
_NF_REPEAT = 4


class _Queue(Protocol):
    def read(self) -> list[Any]: ...
    def verdict(self, packet_id: int, verdict: int, mark: int | None = None) -> None: ...
    def close(self) -> None: ...


def parse_ip_packet(
    family: int, payload: bytes
) -> tuple[str, tuple[str, int], tuple[str, int]] | None:
    """``(transport, source, destination)`` of an IPv4/IPv6 TCP or UDP packet, else None."""
    try:
        if family == socket.AF_INET or (payload and payload[0] >> 4 == 4):
            ihl = (payload[0] & 0x0F) * 4
            proto = payload[9]
            src_ip = socket.inet_ntop(socket.AF_INET, payload[12:16])
            dst_ip = socket.inet_ntop(socket.AF_INET, payload[16:20])
            offset = ihl
        else:
            proto = payload[6]
            src_ip = str(ipaddress.IPv6Address(payload[8:24]))
            dst_ip = str(ipaddress.IPv6Address(payload[24:40]))
            offset = 40
        if proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            return None
        sport, dport = struct.unpack_from("!HH", payload, offset)
    except (IndexError, struct.error, ValueError):
        return None
    transport = "tcp" if proto == socket.IPPROTO_TCP else "udp"
    return transport, (src_ip, sport), (dst_ip, dport)


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
        self.counts = Counters(("queued", "rejected", "not_parsed", "callback_errors"))
        self.log_only = False

    def start(self, *, log_only: bool = False) -> None:
        """Bind the queue (``OSError`` when it cannot) and start reading it. ``log_only``:
        read copies from NFLOG group ``queue`` instead (the kernel rejects on its own)."""
        self.log_only = log_only
        if self._open_queue is not None:
            self._queue = self._open_queue(self.queue)
        elif log_only:
            from proscribe.agent.sensors.dns._nfqueue_linux import NfLog

            self._queue = NfLog(self.queue)
        else:
            from proscribe.agent.sensors.dns._nfqueue_linux import NfQueue

            self._queue = NfQueue(self.queue)
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

    def handle(self, queue: _Queue, packet: Any) -> None:
        """Attribute, hand back to be rejected, then report (the client is not kept waiting
        for the report)."""
        self.counts.add("queued")
        parsed = parse_ip_packet(packet.family, packet.payload)
        if parsed is None:
            self.counts.add("not_parsed")
            queue.verdict(packet.packet_id, _NF_REPEAT, self._reject_mark)
            return
        transport, local, remote = parsed
        process, reason = self._attribute(transport, local, remote)
        queue.verdict(packet.packet_id, _NF_REPEAT, self._reject_mark)
        self.counts.add("rejected")
        if process is None and packet.uid is not None:
            reason = f"{reason or 'unknown'}; the socket belonged to uid {packet.uid}"
        ip, port = remote
        if port == DOT_PORT:
            protocol = "DoT" if transport == "tcp" else "DoQ"
        elif port == DOH_PORT:
            protocol = "DoH"
        else:
            protocol = "DoT"
        connection = EncryptedDnsConnection(
            protocol=protocol,
            resolver=remote,
            provider=self._resolvers.get(ip) or None,
            local=local,
            process=process,
            attribution_reason=None if process else reason,
            time=self._clock(),
            blocked=True,
        )
        try:
            self._on_connection(connection)
        except Exception:
            self.counts.add("callback_errors")
            log.exception("encrypted DNS callback failed")
