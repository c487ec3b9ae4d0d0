"""DnsCapture's packet handling, fed packets directly (no packet socket, no root needed)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from proscribe.agent.sensors.dns import DnsCapture, DnsObservation, ProcessAttributor
from proscribe.agent.sensors.dns.capture import REASON_STUB_FORWARD
from tests.unit.test_dns_attribution import make_procfs

IP, IP6 = 0x0800, 0x86DD


def udp4(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
        socket.inet_aton(src[0]), socket.inet_aton(dst[0]),
    )  # fmt: skip
    return header + udp


QUERY = dns.message.make_query("chat.DeepSeek.com", "A").to_wire()


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[tuple[DnsCapture, list[DnsObservation]]]:
    seen: list[DnsObservation] = []
    attributor = ProcessAttributor(make_procfs(tmp_path), use_sock_diag=False)
    dummy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dummy.bind(("127.0.0.1", 0))  # stands in for the packet socket; nothing is sent to it
    sensor = DnsCapture(seen.append, attributor=attributor, socket_factory=lambda: dummy)
    sensor.start()
    yield sensor, seen
    sensor.stop()


def test_app_query_to_stub_and_the_stubs_forward(
    capture: tuple[DnsCapture, list[DnsObservation]],
) -> None:
    sensor, seen = capture
    app = udp4(("127.0.0.1", 40000), ("127.0.0.53", 53), QUERY)
    forward = udp4(("10.0.0.5", 50000), ("10.0.0.2", 53), QUERY)
    sensor.handle_packet(app, ("lo", IP, 0, 772, b""))
    sensor.handle_packet(forward, ("eth0", IP, 4, 1, b""))
    sensor.stop()
    assert [o.qname for o in seen] == ["chat.deepseek.com", "chat.deepseek.com"]
    assert seen[0].process is not None and seen[0].process["pid"] == 4242
    assert seen[1].forwarded and seen[1].process is None
    assert seen[1].attribution_reason == REASON_STUB_FORWARD
    assert sensor.stats()["forwarded"] == 1 and sensor.stats()["attributed"] == 1


def test_a_stubs_forward_to_a_second_loopback_resolver_but_not_a_retry_to_the_same(
    capture: tuple[DnsCapture, list[DnsObservation]],
) -> None:
    """resolved (127.0.0.53) forwarding to a local dnsmasq (127.0.0.1) whose socket is gone
    is a forward; the same question asked of the same stub again is an application's."""
    sensor, seen = capture
    app = udp4(("127.0.0.1", 40000), ("127.0.0.53", 53), QUERY)
    forward = udp4(("127.0.0.1", 50000), ("127.0.0.1", 53), QUERY)
    retry = udp4(("127.0.0.1", 50001), ("127.0.0.53", 53), QUERY)
    for packet in (app, forward, retry):
        sensor.handle_packet(packet, ("lo", IP, 0, 772, b""))
    sensor.stop()
    assert seen[0].process is not None
    assert seen[1].forwarded and seen[1].attribution_reason == REASON_STUB_FORWARD
    assert not seen[2].forwarded and seen[2].process is None


def test_unrelated_unattributable_query_is_not_called_forwarded(
    capture: tuple[DnsCapture, list[DnsObservation]],
) -> None:
    sensor, seen = capture
    sensor.handle_packet(
        udp4(("10.0.0.5", 50000), ("10.0.0.2", 53), QUERY), ("eth0", IP, 4, 1, b"")
    )
    sensor.stop()
    assert not seen[0].forwarded and seen[0].process is None
    assert seen[0].attribution_reason is not None and "closed" in seen[0].attribution_reason


def test_garbage_outgoing_lo_and_other_protocols_are_counted(
    capture: tuple[DnsCapture, list[DnsObservation]],
) -> None:
    sensor, seen = capture
    sensor.handle_packet(b"\x45\x00", ("eth0", IP, 0, 1, b""))
    sensor.handle_packet(
        udp4(("10.0.0.2", 53), ("10.0.0.5", 1), b"\x01\x02garbage"), ("eth0", IP, 0, 1, b"")
    )
    sensor.handle_packet(udp4(("127.0.0.1", 1), ("127.0.0.1", 53), QUERY), ("lo", IP, 4, 772, b""))
    sensor.handle_packet(b"\x00" * 40, ("eth0", 0x0806, 0, 1, b""))
    stats = sensor.stats()
    assert stats["malformed"] == 2 and stats["outgoing_lo_skipped"] == 1
    assert stats["not_dns"] == 1 and stats["seen"] == 4
    sensor.stop()
    assert seen == []


def test_interface_filter(tmp_path: Path) -> None:
    seen: list[DnsObservation] = []
    sensor = DnsCapture(seen.append, interfaces=("eth0",))
    sensor.handle_packet(udp4(("10.0.0.5", 1), ("10.0.0.2", 53), QUERY), ("wlan0", IP, 4, 1, b""))
    assert sensor.stats()["other_interface"] == 1


def test_plain_responses_can_be_skipped_but_cname_answers_are_kept() -> None:
    seen: list[DnsObservation] = []
    sensor = DnsCapture(seen.append, plain_responses=False)
    query = dns.message.make_query("cloak.example", "A")
    plain = dns.message.make_response(query)
    cloaked = dns.message.make_response(query)
    cloaked.answer.append(
        dns.rrset.from_text("cloak.example.", 60, "IN", "CNAME", "api.deepseek.com.")
    )
    for response in (plain, cloaked):
        packet = udp4(("10.0.0.2", 53), ("10.0.0.5", 40000), response.to_wire())
        sensor.handle_packet(packet, ("eth0", IP, 0, 1, b""))
    stats = sensor.stats()
    assert stats["plain_responses_skipped"] == 1 and stats["responses"] == 2
    assert stats["parsed"] == 1


def test_messages_no_rule_matches_are_counted_and_dropped_before_attribution(
    tmp_path: Path,
) -> None:
    seen: list[DnsObservation] = []
    looked_up: list[str] = []
    attributor = ProcessAttributor(make_procfs(tmp_path), use_sock_diag=False)

    def relevant(names: tuple[str, ...]) -> bool:
        looked_up.extend(names)
        return any(n == "deepseek.com" or n.endswith(".deepseek.com") for n in names)

    sensor = DnsCapture(seen.append, attributor=attributor, relevant=relevant)
    allowed = dns.message.make_query("Allowed.Example.", "A")
    cloaked = dns.message.make_response(dns.message.make_query("cloak.example", "A"))
    cloaked.answer.append(
        dns.rrset.from_text("cloak.example.", 60, "IN", "CNAME", "api.deepseek.com.")
    )
    packets = [
        udp4(("127.0.0.1", 40000), ("127.0.0.53", 53), allowed.to_wire()),
        udp4(("127.0.0.1", 40000), ("127.0.0.53", 53), QUERY),
        udp4(("10.0.0.2", 53), ("10.0.0.5", 40001), cloaked.to_wire()),
    ]
    for packet in packets:
        sensor.handle_packet(packet, ("eth0", IP, 0, 1, b""))
    stats = sensor.stats()
    assert stats["queries"] == 2 and stats["responses"] == 1 and stats["unmatched"] == 1
    # The denied query and the cloaked answer were looked up; the allowed query was not.
    assert stats["attributed"] + stats["unattributed"] == 2
    assert "allowed.example" in looked_up  # every name is still checked
    assert stats["queue_depth"] == 2  # the denied query and the cloaked answer, not the allowed
