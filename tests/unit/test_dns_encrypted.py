"""The encrypted-DNS watch on a fake /proc/net/tcp: what counts as DoT/DoH, once per socket,
once per process and resolver within the window; the event it becomes passes the collector's
schema."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from proscribe.agent.sensors.dns.encrypted import (
    EncryptedDnsConnection,
    EncryptedDnsWatch,
    TcpConnection,
    read_tcp_connections,
    resolver_table,
)

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)


def v4(ip: str, port: int) -> str:
    return f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"


def v6(ip: str, port: int) -> str:
    raw = socket.inet_pton(socket.AF_INET6, ip)
    words = "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, 16, 4))
    return f"{words}:{port:04X}"


def line(n: int, local: str, remote: str, state: str, uid: int, inode: int) -> str:
    return (
        f"  {n}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 "
        f"{uid:5d}        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    )


def write_tables(procfs: Path, v4_lines: list[str], v6_lines: list[str]) -> None:
    (procfs / "net").mkdir(parents=True, exist_ok=True)
    (procfs / "net" / "tcp").write_text(HEADER + "".join(v4_lines))
    (procfs / "net" / "tcp6").write_text(HEADER + "".join(v6_lines))


def test_connections_are_read_and_classified(tmp_path: Path) -> None:
    write_tables(
        tmp_path,
        [
            line(0, v4("10.0.0.5", 40000), v4("1.1.1.1", 443), "01", 1000, 11),  # DoH
            line(1, v4("10.0.0.5", 40001), v4("203.0.113.9", 853), "02", 1000, 12),  # DoT
            line(2, v4("10.0.0.5", 40002), v4("203.0.113.9", 443), "01", 1000, 13),  # HTTPS
            line(3, v4("0.0.0.0", 853), v4("0.0.0.0", 0), "0A", 0, 14),  # a listener
            line(4, v4("10.0.0.5", 40003), v4("8.8.8.8", 443), "06", 1000, 0),  # TIME_WAIT
        ],
        [line(0, v6("2001:db8::5", 40004), v6("2606:4700:4700::1111", 443), "01", 1000, 15)],
    )
    found = list(read_tcp_connections(tmp_path))
    assert [c.inode for c in found] == [11, 12, 13, 15]
    assert found[0].remote == ("1.1.1.1", 443) and found[0].local == ("10.0.0.5", 40000)
    assert found[3].remote == ("2606:4700:4700::1111", 443)

    reports: list[EncryptedDnsConnection] = []
    processes = {11: {"pid": 1, "exe": "/usr/bin/firefox"}, 12: None, 15: {"pid": 2, "exe": "/c"}}

    def attribute(c: TcpConnection) -> tuple[Any, str | None]:
        process = processes.get(c.inode)
        return process, None if process else "socket owner not found"

    watch = EncryptedDnsWatch(reports.append, attribute, procfs=tmp_path, clock=lambda: 100.0)
    assert len(watch.poll()) == 3
    by_inode = {r.local[1]: r for r in reports}
    assert by_inode[40000].protocol == "DoH" and by_inode[40000].provider == "Cloudflare"
    assert by_inode[40000].description == "DNS over HTTPS to 1.1.1.1:443 (Cloudflare)"
    assert by_inode[40001].protocol == "DoT" and by_inode[40001].process is None
    assert by_inode[40001].attribution_reason == "socket owner not found"
    assert watch.poll() == []  # the same sockets: judged already


def test_one_report_per_process_and_resolver_within_the_window(tmp_path: Path) -> None:
    now = [0.0]
    reports: list[EncryptedDnsConnection] = []
    watch = EncryptedDnsWatch(
        reports.append,
        lambda c: ({"pid": 7, "exe": "/usr/bin/chromium"}, None),
        procfs=tmp_path,
        window=600,
        clock=lambda: now[0],
    )
    for inode in (21, 22, 23):  # the browser opens a new DoH connection now and then
        write_tables(
            tmp_path, [line(0, v4("10.0.0.5", inode), v4("8.8.8.8", 443), "01", 0, inode)], []
        )
        watch.poll()
        now[0] += 300
    assert len(reports) == 2  # at 0 s and at 600 s, not at 300 s
    assert watch.counts["connections"] == 3


def test_a_stub_resolvers_upstream_is_not_reported(tmp_path: Path) -> None:
    write_tables(tmp_path, [line(0, v4("10.0.0.5", 5000), v4("9.9.9.9", 853), "01", 101, 31)], [])
    reports: list[EncryptedDnsConnection] = []
    watch = EncryptedDnsWatch(reports.append, lambda c: None, procfs=tmp_path)
    watch.poll()
    assert reports == [] and watch.counts["stub_upstream"] == 1


def test_extra_resolvers_and_a_bad_one() -> None:
    table = resolver_table(["10.1.2.3", "2001:DB8::53"])
    assert table["10.1.2.3"] == "" and "2001:db8::53" in table and table["8.8.8.8"]
    with pytest.raises(ValueError):
        resolver_table(["dns.example"])


def test_the_event_passes_the_collectors_schema() -> None:
    from proscribe.agent.dns_guard import DnsGuard
    from proscribe.agent.evidence import Evidence, HostSection
    from proscribe.collector.api.schema import EventIn

    stored: list[dict[str, Any]] = []

    class Spool:
        def append(self, event: dict[str, Any]) -> bool:
            stored.append(event)
            return True

    class Policy:
        compiled = None

    guard = DnsGuard(
        policy=Policy(),  # type: ignore[arg-type]
        evidence=Evidence(Spool(), HostSection("ws")),  # type: ignore[arg-type]
        hostname="ws",
    )
    guard.on_encrypted(
        EncryptedDnsConnection(
            "DoH", ("1.1.1.1", 443), "Cloudflare", ("10.0.0.5", 4000),
            {"pid": 9, "name": "firefox", "exe": "/usr/bin/firefox"}, None, 0.0,
        )
    )  # fmt: skip
    (event,) = stored
    assert event["rule"] == "encrypted-dns" and event["action"] == "reported"
    assert event["dns"] == {"qname": "Cloudflare", "qtype": "DoH", "resolver": "1.1.1.1:443"}
    assert "DNS over HTTPS to 1.1.1.1:443 (Cloudflare)" in event["detail"]
    EventIn.model_validate(event)


def test_connected_udp_sockets_are_quic(tmp_path: Path) -> None:
    write_tables(tmp_path, [], [])
    (tmp_path / "net" / "udp").write_text(
        HEADER
        + line(0, v4("10.0.0.5", 50000), v4("94.140.14.14", 853), "01", 0, 41)  # DoQ
        + line(1, v4("10.0.0.5", 50001), v4("1.1.1.1", 443), "01", 0, 42)  # DoH over HTTP/3
        + line(2, v4("0.0.0.0", 5353), v4("0.0.0.0", 0), "07", 0, 43)  # unconnected
        + line(3, v4("10.0.0.5", 50002), v4("203.0.113.9", 443), "01", 0, 44)  # plain QUIC
    )
    reports: list[EncryptedDnsConnection] = []
    seen: list[str] = []

    def attribute(c: TcpConnection) -> tuple[Any, str | None]:
        seen.append(c.transport)
        return {"pid": c.inode}, None

    EncryptedDnsWatch(reports.append, attribute, procfs=tmp_path).poll()
    assert [(r.protocol, r.provider) for r in reports] == [
        ("DoQ", "AdGuard DNS"),
        ("DoH", "Cloudflare"),
    ]
    assert reports[0].description == "DNS over QUIC to 94.140.14.14:853 (AdGuard DNS)"
    assert seen == ["udp", "udp"]  # attributed as UDP sockets


def test_the_watch_polls_less_often_on_a_host_with_many_sockets(tmp_path: Path) -> None:
    watch = EncryptedDnsWatch(lambda c: None, lambda c: None, procfs=tmp_path, interval=5.0)
    assert watch.next_wait(0.001) == 5.0  # 1 ms a poll: the normal pace
    assert watch.next_wait(0.030) == pytest.approx(15.0)  # 30 ms: 0.2% of a core at most
    assert watch.counts["interval_ms"] == 15000


def client_hello(alpn: list[str] | None) -> bytes:
    """The first bytes a real TLS client (Python's ssl, OpenSSL) sends: its ClientHello."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="dns.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_client_hello_alpn_tells_dot_from_doh() -> None:
    from proscribe.agent.sensors.dns.encrypted_block import client_hello_alpn, label_tls_853

    cases = [
        (["dot"], ("dot",), "DoT"),
        (["h2", "http/1.1"], ("h2", "http/1.1"), "DoH"),
        (["http/1.1"], ("http/1.1",), "DoH"),
        (["dot", "h2"], ("dot", "h2"), "DoT"),  # says dot: DoT
        (None, (), "DoT"),  # no ALPN (kdig, older stubs): DoT, RFC 7858
    ]
    for offered, alpn, label in cases:
        hello = client_hello(offered)
        assert client_hello_alpn(hello) == alpn, offered
        assert label_tls_853(client_hello_alpn(hello)) == label
    hello = client_hello(["h2"])
    # cut before its extensions end (a ClientHello split over segments): not read
    assert client_hello_alpn(hello[:60]) is None
    assert client_hello_alpn(b"") is None
    assert client_hello_alpn(b"GET / HTTP/1.1\r\n\r\n") is None  # not TLS
    assert label_tls_853(None) == "DoT"


def test_queued_attempt_is_attributed_before_it_is_handed_back_to_be_rejected() -> None:
    """The queue path (kernels with nftables' queue): the sender is looked up while its
    socket still connects. A TCP SYN to 853 is handed back accepted and the ClientHello that
    follows is the packet handed back with the reject mark, labelled by its ALPN; DoQ and DoH
    (443) are rejected on their first packet, labelled by port and transport. A SYN whose
    ClientHello never comes is reported as DoT once held long enough."""
    import socket as socket_module
    import struct

    from proscribe.agent.sensors.dns import encrypted_block
    from proscribe.agent.sensors.dns._nfqueue_linux import QueuedPacket
    from proscribe.agent.sensors.dns.encrypted_block import EncryptedDnsBlocker, parse_ip_packet

    def ipv4(proto: int, dst: str, dport: int, data: bytes = b"", sport: int = 40000) -> bytes:
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 40 + len(data), 0, 0, 64, proto, 0,
            socket_module.inet_aton("10.0.0.1"), socket_module.inet_aton(dst),
        )  # fmt: skip
        return header + struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0, 0, 0, 0) + data

    steps: list[str] = []
    reported = []

    class Queue:
        def read(self) -> list[QueuedPacket]:
            return []

        def verdict(self, packet_id: int, verdict: int, mark: int | None = None) -> None:
            steps.append(f"verdict {packet_id} {verdict} {mark}")

        def close(self) -> None:
            pass

    def attribute(transport: str, local: tuple[str, int], remote: tuple[str, int]) -> Any:
        steps.append(f"attribute {transport} {local} {remote}")
        return {"pid": 7, "name": "firefox"}, None

    blocker = EncryptedDnsBlocker(
        reported.append, attribute, queue=1, reject_mark=99, resolvers={"1.1.1.1": "Cloudflare"}
    )
    queue = Queue()
    af = socket_module.AF_INET
    blocker.handle(queue, QueuedPacket(5, af, ipv4(6, "9.9.9.10", 853), 1000))
    assert steps == [
        "attribute tcp ('10.0.0.1', 40000) ('9.9.9.10', 853)",
        "verdict 5 1 None",  # the SYN goes on: NF_ACCEPT
    ]
    assert reported == []  # waiting for the ClientHello
    hello = client_hello(["h2", "http/1.1"])
    blocker.handle(queue, QueuedPacket(6, af, ipv4(6, "9.9.9.10", 853, hello), 1000))
    assert steps[-1] == "verdict 6 4 99"  # NF_REPEAT with the reject mark: the next pass rejects
    assert [(c.protocol, c.alpn) for c in reported] == [("DoH", ("h2", "http/1.1"))]
    assert reported[0].process == {"pid": 7, "name": "firefox"}
    assert "(TLS ALPN h2, http/1.1)" in reported[0].description
    blocker.handle(queue, QueuedPacket(7, af, ipv4(17, "9.9.9.10", 853), 0))
    blocker.handle(queue, QueuedPacket(8, af, ipv4(6, "1.1.1.1", 443), 0))
    blocker.handle(queue, QueuedPacket(9, af, ipv4(17, "1.1.1.1", 443), 0))
    assert [(c.protocol, c.provider, c.blocked) for c in reported[1:]] == [
        ("DoQ", None, True), ("DoH", "Cloudflare", True), ("DoH", "Cloudflare", True),
    ]  # fmt: skip
    # a SYN whose connection is refused: reported as DoT when its hold runs out
    blocker.handle(queue, QueuedPacket(10, af, ipv4(6, "9.9.9.11", 853, sport=40001), 1000))
    blocker.report_expired()
    assert len(reported) == 4
    blocker._monotonic = lambda: time.monotonic() + encrypted_block._HOLD_SECONDS + 1
    blocker.report_expired()
    assert [(c.protocol, c.resolver, c.alpn) for c in reported[4:]] == [
        ("DoT", ("9.9.9.11", 853), None)
    ]
    assert "labelled by its port" in reported[4].description
    assert blocker.stats()["tls_read"] == 1 and blocker.stats()["no_client_hello"] == 1
    # not an IP packet: still handed back to be rejected, counted
    blocker.handle(queue, QueuedPacket(11, af, b"\x45", 0))
    assert steps[-1] == "verdict 11 4 99" and blocker.stats()["not_parsed"] == 1
    assert parse_ip_packet(af, ipv4(1, "1.1.1.1", 0)) is None  # ICMP
