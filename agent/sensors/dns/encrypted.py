"""Encrypted DNS that goes around both DNS sensors: DNS over TLS, HTTPS and QUIC.

Neither passive capture (port 53) nor the enforcing proxy can see a query sent over TLS to a
public resolver, so a browser with DNS over HTTPS turned on resolves ``chat.deepseek.com``
unseen. What can be seen is the connection itself: TCP to port 853 is DNS over TLS (RFC 7858)
and UDP to port 853 DNS over QUIC (RFC 9250) wherever they go, and TCP or UDP (HTTP/3) to port
443 of a well-known public DoH resolver is DNS over HTTPS (REFERENCE.md §2: "treat
connections to known DoH resolvers as bypass events").

:class:`EncryptedDnsWatch` reads the kernel's socket tables (``/proc/net/tcp``, ``tcp6``,
``udp``, ``udp6``; a UDP socket appears with a peer once the program ``connect``-ed it) every
``interval`` seconds and reports each such connection once per process and resolver within
``window`` seconds, with the process that owns it. Connected sockets live for as long as the
browser keeps its DoH connection open (minutes), so polling sees them; a connection opened and
closed between two polls is missed (stated in docs/limitations.md). Linux only.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CPU_BUDGET = 0.002  # the watch stays under 0.2% of one core (see next_wait)
DOT_PORT = 853
DOH_PORT = 443
_ESTABLISHED, _SYN_SENT = "01", "02"
_PORT_853, _PORT_443 = f":{DOT_PORT:04X}", f":{DOH_PORT:04X}"  # as /proc/net prints them

# Public resolvers that answer DNS over HTTPS on these addresses (their published anycast
# addresses; the same ones browsers' built-in DoH provider lists use).
KNOWN_DOH_RESOLVERS: Mapping[str, str] = {
    "1.1.1.1": "Cloudflare",
    "1.0.0.1": "Cloudflare",
    "2606:4700:4700::1111": "Cloudflare",
    "2606:4700:4700::1001": "Cloudflare",
    "8.8.8.8": "Google Public DNS",
    "8.8.4.4": "Google Public DNS",
    "2001:4860:4860::8888": "Google Public DNS",
    "2001:4860:4860::8844": "Google Public DNS",
    "9.9.9.9": "Quad9",
    "149.112.112.112": "Quad9",
    "2620:fe::fe": "Quad9",
    "2620:fe::9": "Quad9",
    "208.67.222.222": "OpenDNS",
    "208.67.220.220": "OpenDNS",
    "94.140.14.14": "AdGuard DNS",
    "94.140.15.15": "AdGuard DNS",
    "45.90.28.0": "NextDNS",
    "45.90.30.0": "NextDNS",
}


@dataclass(frozen=True, slots=True)
class TcpConnection:
    """A connected socket (TCP, or UDP with a peer) from the kernel's tables."""

    local: tuple[str, int]
    remote: tuple[str, int]
    uid: int
    inode: int
    transport: str = "tcp"


@dataclass(frozen=True, slots=True)
class EncryptedDnsConnection:
    """One process's connection to an encrypted DNS resolver, as reported."""

    protocol: str  # "DoT", "DoH" or "DoQ"
    resolver: tuple[str, int]
    provider: str | None
    local: tuple[str, int]
    process: dict[str, Any] | None
    attribution_reason: str | None
    time: float
    blocked: bool = False  # rejected by the agent's nftables rule (encrypted_block.py)
    # TLS to port 853: the ClientHello's ALPN that labelled it (() = it offered none); None
    # when no ClientHello was read (the label is then the port's)
    alpn: tuple[str, ...] | None = None

    @property
    def description(self) -> str:
        name = {"DoT": "DNS over TLS", "DoH": "DNS over HTTPS", "DoQ": "DNS over QUIC"}[
            self.protocol
        ]
        who = f" ({self.provider})" if self.provider else ""
        if self.alpn:
            how = f" (TLS ALPN {', '.join(self.alpn)})"
        elif self.alpn is not None:
            how = " (TLS ClientHello without ALPN)"
        elif self.blocked and self.protocol == "DoT":
            how = " (no TLS ClientHello read: labelled by its port)"
        else:
            how = ""
        return f"{name} to {self.resolver[0]}:{self.resolver[1]}{who}{how}"


def _address(text: str) -> tuple[str, int]:
    """``0100007F:0035`` (or the 32-hex-digit IPv6 form) -> ``("127.0.0.1", 53)``."""
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    # /proc/net prints each 32-bit word in host (little-endian) order.
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(swapped)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(hex_port, 16)


def read_tcp_connections(procfs: Path = Path("/proc")) -> Iterator[TcpConnection]:
    """Connected (or connecting) TCP sockets and connected UDP sockets of this network
    namespace, IPv4 and IPv6."""
    for table, transport, states in (
        ("tcp", "tcp", (_ESTABLISHED, _SYN_SENT)),
        ("tcp6", "tcp", (_ESTABLISHED, _SYN_SENT)),
        ("udp", "udp", (_ESTABLISHED,)),  # 01: connect()-ed to a peer; 07: unconnected
        ("udp6", "udp", (_ESTABLISHED,)),
    ):
        try:
            data = (procfs / "net" / table).read_bytes().decode("ascii", "replace")
        except OSError:
            continue
        for line in data.splitlines()[1:]:
            # Most lines are neither port: a substring test is ~50x cheaper than parsing one.
            if _PORT_853 not in line and _PORT_443 not in line:
                continue
            fields = line.split()
            if len(fields) < 10 or fields[3] not in states:
                continue
            if not fields[2].endswith((_PORT_853, _PORT_443)):
                continue  # the port was the local one
            try:
                local, remote = _address(fields[1]), _address(fields[2])
                uid, inode = int(fields[7]), int(fields[9])
            except ValueError:
                continue
            if inode:
                yield TcpConnection(local, remote, uid, inode, transport)


def classify(
    connection: TcpConnection, doh_resolvers: Mapping[str, str]
) -> tuple[str, str | None] | None:
    """``("DoT" | "DoH" | "DoQ", provider)`` for an encrypted-DNS connection, else None."""
    ip, port = connection.remote
    if port == DOT_PORT:
        return ("DoT" if connection.transport == "tcp" else "DoQ"), doh_resolvers.get(ip) or None
    if port == DOH_PORT and ip in doh_resolvers:  # HTTP/2 over TCP or HTTP/3 over UDP
        return "DoH", doh_resolvers[ip] or None
    return None


def resolver_table(extra: Iterable[str] = ()) -> dict[str, str]:
    """The known DoH resolvers plus ``extra`` addresses (``[dns] doh_resolvers``)."""
    table = dict(KNOWN_DOH_RESOLVERS)
    for text in extra:
        table[str(ipaddress.ip_address(text))] = table.get(text, "")
    return table


# (process or None, why not) for a connection; None = do not report it at all (a local stub
# resolver's upstream connection: the applications' queries reach it over port 53, in view).
Attribute = Callable[[TcpConnection], tuple[dict[str, Any] | None, str | None] | None]


class EncryptedDnsWatch:
    """Polls the TCP tables and calls ``on_connection`` for each new encrypted-DNS connection
    (once per process, resolver and ``window``)."""

    def __init__(
        self,
        on_connection: Callable[[EncryptedDnsConnection], None],
        attribute: Attribute,
        *,
        procfs: Path = Path("/proc"),
        interval: float = 5.0,
        window: float = 3600.0,
        resolvers: Mapping[str, str] = KNOWN_DOH_RESOLVERS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._on_connection = on_connection
        self._attribute = attribute
        self._procfs = procfs
        self._interval = interval
        self._window = window
        self._resolvers = dict(resolvers)
        self._clock = clock
        self._seen_inodes: set[int] = set()
        self._reported: dict[tuple[object, str, str, int], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = dict.fromkeys(
            ("polls", "connections", "stub_upstream", "reported", "errors", "interval_ms"), 0
        )

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dns-encrypted", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.thread_time()
            try:
                self.poll()
            except Exception:  # the watch must outlive its own bugs
                self.counts["errors"] += 1
                log.exception("encrypted DNS watch: poll failed (continuing)")
            self._stop.wait(self.next_wait(time.thread_time() - started))

    def next_wait(self, cost: float) -> float:
        """The pause before the next poll: ``interval``, or longer on a host with so many
        sockets that polling that often would cost more than ``CPU_BUDGET`` of a core (reading
        the kernel's tables costs ~1-2 µs per socket: 0.5% of a core at 17k sockets every 5 s)."""
        wait = max(self._interval, cost / CPU_BUDGET)
        self.counts["interval_ms"] = int(wait * 1000)
        return wait

    def poll(self) -> list[EncryptedDnsConnection]:
        """One look at the TCP tables; returns (and delivers) what was newly reported."""
        self.counts["polls"] += 1
        now = self._clock()
        current: set[int] = set()
        found: list[EncryptedDnsConnection] = []
        for connection in read_tcp_connections(self._procfs):
            kind = classify(connection, self._resolvers)
            if kind is None:
                continue
            current.add(connection.inode)
            if connection.inode in self._seen_inodes:
                continue  # the same socket as at the last poll: already judged
            self.counts["connections"] += 1
            attributed = self._attribute(connection)
            if attributed is None:
                self.counts["stub_upstream"] += 1
                continue
            process, reason = attributed
            protocol, provider = kind
            who: object = (process or {}).get("exe") or (process or {}).get("pid") or "unknown"
            key = (who, protocol, connection.remote[0], connection.remote[1])
            last = self._reported.get(key)
            if last is not None and now - last < self._window:
                continue
            self._reported[key] = now
            found.append(
                EncryptedDnsConnection(
                    protocol, connection.remote, provider, connection.local, process, reason, now
                )
            )
        self._seen_inodes = current
        if len(self._reported) > 10_000:
            self._reported = {k: t for k, t in self._reported.items() if now - t < self._window}
        for item in found:
            self.counts["reported"] += 1
            try:
                self._on_connection(item)
            except Exception:
                self.counts["errors"] += 1
                log.exception("encrypted DNS watch: callback failed")
        return found
