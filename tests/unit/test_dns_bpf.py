"""The capture BPF program, run in a small classic-BPF interpreter over real packet bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proscribe.agent.sensors.dns import bpf
from proscribe.agent.sensors.dns.headers import DnsSegment, MalformedPacket, parse_packet

LO = 1
ETH0 = 2
HOST, OUTGOING = 0, 4


def run(
    program: list[bpf.Instruction], packet: bytes, pkttype: int, ifindex: int, proto: int
) -> int:
    """Minimal classic BPF interpreter: the opcodes the DNS filter uses, nothing else."""
    a = x = 0
    pc = 0
    ancillary = {
        bpf.SKF_AD_OFF + bpf.SKF_AD_PROTOCOL: proto,
        bpf.SKF_AD_OFF + bpf.SKF_AD_PKTTYPE: pkttype,
        bpf.SKF_AD_OFF + bpf.SKF_AD_IFINDEX: ifindex,
    }

    def load(offset: int, size: int) -> int:
        if offset in ancillary:
            return ancillary[offset]
        if offset + size > len(packet):
            raise IndexError  # the kernel returns 0 (drop) on an out-of-bounds load
        return int.from_bytes(packet[offset : offset + size], "big")

    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        try:
            if code == bpf.LD_W_ABS:
                a = load(k, 4)
            elif code == bpf.LD_H_ABS:
                a = load(k, 2)
            elif code == bpf.LD_B_ABS:
                a = load(k, 1)
            elif code == bpf.LD_H_IND:
                a = load(x + k, 2)
            elif code == bpf.LDX_B_MSH:
                x = (load(k, 1) & 0x0F) * 4
            elif code == bpf.JEQ_K:
                pc += jt if a == k else jf
            elif code == bpf.JSET_K:
                pc += jt if a & k else jf
            elif code == bpf.RET_K:
                return k
            else:
                raise AssertionError(f"unexpected opcode {code:#x}")
        except IndexError:
            return 0


def ipv4(proto: int, sport: int, dport: int, payload: bytes = b"", frag: int = 0) -> bytes:
    if proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 1024, 0, 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        1,
        frag,
        64,
        proto,
        0,
        bytes([127, 0, 0, 1]),
        bytes([127, 0, 0, 53]),
    )
    return header + l4


def ipv6(proto: int, sport: int, dport: int, payload: bytes = b"") -> bytes:
    if proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 1024, 0, 0) + payload
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(l4), proto, 64, b"\0" * 15 + b"\1", b"\0" * 15 + b"\1"
    )
    return header + l4


PROGRAM = bpf.dns_filter(LO)


@pytest.mark.parametrize(
    ("packet", "proto"),
    [
        (ipv4(17, 40000, 53), bpf.ETH_P_IP),
        (ipv4(17, 53, 40000), bpf.ETH_P_IP),
        (ipv4(6, 40000, 53), bpf.ETH_P_IP),
        (ipv6(17, 40000, 53), bpf.ETH_P_IPV6),
        (ipv6(6, 53, 40000), bpf.ETH_P_IPV6),
    ],
)
def test_dns_is_accepted(packet: bytes, proto: int) -> None:
    assert run(PROGRAM, packet, HOST, LO, proto) == bpf.ACCEPT_BYTES
    assert run(PROGRAM, packet, OUTGOING, ETH0, proto) == bpf.ACCEPT_BYTES  # our own queries


@pytest.mark.parametrize(
    ("packet", "proto"),
    [
        (ipv4(17, 40000, 443), bpf.ETH_P_IP),
        (ipv4(6, 40000, 5353), bpf.ETH_P_IP),
        (ipv4(1, 53, 53), bpf.ETH_P_IP),  # ICMP
        (ipv4(17, 40000, 53, frag=5), bpf.ETH_P_IP),  # a later fragment carries no ports
        (ipv6(17, 40000, 853), bpf.ETH_P_IPV6),
        (b"\x00" * 28, 0x0806),  # ARP
        (b"\x45\x00", bpf.ETH_P_IP),  # cut short: out-of-bounds load drops
    ],
)
def test_everything_else_is_dropped(packet: bytes, proto: int) -> None:
    assert run(PROGRAM, packet, HOST, ETH0, proto) == 0


def test_outgoing_copy_on_loopback_is_dropped() -> None:
    assert run(PROGRAM, ipv4(17, 40000, 53), OUTGOING, LO, bpf.ETH_P_IP) == 0


def test_program_packs_to_sock_filter_size() -> None:
    assert len(bpf.pack(PROGRAM)) == 8 * len(PROGRAM)
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _c, jt, jf, _k in PROGRAM)


def test_headers_udp_payload() -> None:
    segment = parse_packet(ipv4(17, 40000, 53, b"hello"), bpf.ETH_P_IP)
    assert segment == DnsSegment(("127.0.0.1", 40000), ("127.0.0.53", 53), "udp", (b"hello",))


def test_headers_tcp_messages_and_partial() -> None:
    two = struct.pack("!H", 3) + b"abc" + struct.pack("!H", 2) + b"de"
    segment = parse_packet(ipv6(6, 40000, 53, two + b"\x00\x09xy"), bpf.ETH_P_IPV6)
    assert segment is not None
    assert segment.messages == (b"abc", b"de") and segment.partial
    assert segment.src == ("::1", 40000) and segment.transport == "tcp"


def test_headers_pure_ack_has_no_message() -> None:
    segment = parse_packet(ipv4(6, 53, 40000), bpf.ETH_P_IP)
    assert segment is not None and segment.messages == () and not segment.partial


@pytest.mark.parametrize(
    "packet", [b"\x45" + b"\x00" * 10, ipv4(17, 1, 53)[:24], b"\x4f" + b"\x00" * 19]
)
def test_headers_malformed(packet: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_packet(packet, bpf.ETH_P_IP)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([bpf.ETH_P_IP, bpf.ETH_P_IPV6, 0x0806]))
def test_fuzz_headers_only_the_one_error(data: bytes, ethertype: int) -> None:
    try:
        parse_packet(data, ethertype)
    except MalformedPacket:
        pass
