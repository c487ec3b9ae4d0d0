"""The classic BPF program that keeps only DNS (port 53, UDP and TCP, IPv4 and IPv6).

Written for an ``AF_PACKET``/``SOCK_DGRAM`` socket, where the packet starts at the network
header on every link type (Ethernet, loopback, tun, WireGuard), so the EtherType is read with
the kernel's ancillary load ``SKF_AD_PROTOCOL`` instead of at Ethernet offset 12. It is the
program ``tcpdump -dd 'port 53'`` prints (minus SCTP), re-based to offset 0, plus a first test
that drops the outgoing copy of each packet on loopback, which would otherwise be seen twice.

Assembled from symbolic labels by :func:`assemble`; ``tests/unit/test_dns_bpf.py`` runs it in a
small interpreter over real packet bytes to check every branch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# Opcodes (linux/filter.h, linux/bpf_common.h).
LD_W_ABS = 0x20
LD_H_ABS = 0x28
LD_B_ABS = 0x30
LD_H_IND = 0x48
LDX_B_MSH = 0xB1
JEQ_K = 0x15
JSET_K = 0x45
RET_K = 0x06

SKF_AD_OFF = 0xFFFFF000  # -0x1000 as u32
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
PACKET_OUTGOING = 4
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
DNS_PORT = 53
ACCEPT_BYTES = 0x40000  # snap length: keep the whole packet

Instruction = tuple[int, int, int, int]  # code, jt, jf, k
_Source = tuple[str | None, int, str | int, str | int, int]  # label, code, jt, jf, k


def dns_filter_source(loopback_ifindex: int) -> list[_Source]:
    """The program with symbolic jump targets (a label or 0 = next instruction)."""
    return [
        (None, LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),
        (None, JEQ_K, 0, "proto", PACKET_OUTGOING),
        (None, LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX),
        (None, JEQ_K, "drop", 0, loopback_ifindex),
        ("proto", LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL),
        (None, JEQ_K, "v6", 0, ETH_P_IPV6),
        (None, JEQ_K, 0, "drop", ETH_P_IP),
        (None, LD_B_ABS, 0, 0, 9),  # IPv4 protocol
        (None, JEQ_K, "v4frag", 0, IPPROTO_UDP),
        (None, JEQ_K, "v4frag", "drop", IPPROTO_TCP),
        ("v4frag", LD_H_ABS, 0, 0, 6),  # fragment offset: only the first fragment has ports
        (None, JSET_K, "drop", 0, 0x1FFF),
        (None, LDX_B_MSH, 0, 0, 0),  # X = 4 * IHL
        (None, LD_H_IND, 0, 0, 0),  # source port
        (None, JEQ_K, "accept", 0, DNS_PORT),
        (None, LD_H_IND, 0, 0, 2),  # destination port
        (None, JEQ_K, "accept", "drop", DNS_PORT),
        ("v6", LD_B_ABS, 0, 0, 6),  # IPv6 next header (no extension headers, as tcpdump)
        (None, JEQ_K, "v6ports", 0, IPPROTO_UDP),
        (None, JEQ_K, "v6ports", "drop", IPPROTO_TCP),
        ("v6ports", LD_H_ABS, 0, 0, 40),
        (None, JEQ_K, "accept", 0, DNS_PORT),
        (None, LD_H_ABS, 0, 0, 42),
        (None, JEQ_K, "accept", "drop", DNS_PORT),
        ("accept", RET_K, 0, 0, ACCEPT_BYTES),
        ("drop", RET_K, 0, 0, 0),
    ]


def assemble(source: Sequence[_Source]) -> list[Instruction]:
    """Resolve labels into relative jump offsets (classic BPF jumps only forward)."""
    labels = {label: i for i, (label, *_rest) in enumerate(source) if label}
    program: list[Instruction] = []
    for index, (_label, code, jt, jf, k) in enumerate(source):

        def offset(target: str | int, index: int = index) -> int:
            if isinstance(target, int):
                return target
            delta = labels[target] - index - 1
            if not 0 <= delta <= 255:
                raise ValueError(f"jump to {target} out of range at {index}")
            return delta

        program.append((code, offset(jt), offset(jf), k & 0xFFFFFFFF))
    return program


def dns_filter(loopback_ifindex: int) -> list[Instruction]:
    return assemble(dns_filter_source(loopback_ifindex))


def pack(program: Sequence[Instruction]) -> bytes:
    """``struct sock_filter[]`` bytes for ``SO_ATTACH_FILTER``."""
    return b"".join(struct.pack("=HBBI", *ins) for ins in program)
