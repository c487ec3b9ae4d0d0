"""Pure parsing of IPv4/IPv6 + UDP/TCP headers down to the DNS payload(s).

Input is what an ``AF_PACKET``/``SOCK_DGRAM`` socket returns: the packet from the network
header on, and its EtherType. TCP is handled for the simple case only: each segment is parsed on
its own, and every complete length-prefixed DNS message inside it is returned; a message split
across segments is counted as ``partial`` and skipped (no stream reassembly).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_ntop

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_TCP = 6
_UDP = 17
_PORTS = struct.Struct("!HH")


class MalformedPacket(ValueError):
    """The IP/UDP/TCP headers are inconsistent or cut short."""


@dataclass(frozen=True, slots=True)
class DnsSegment:
    """One packet's addresses and the DNS messages it carries (possibly none, e.g. a TCP ACK)."""

    src: tuple[str, int]
    dst: tuple[str, int]
    transport: str
    messages: tuple[bytes, ...]
    partial: bool = False  # TCP: bytes of a message that continues in another segment


def parse_packet(data: bytes, ethertype: int) -> DnsSegment | None:
    """Split a packet into addresses and DNS payloads; ``None`` when not IP UDP/TCP."""
    if ethertype == ETH_P_IP:
        if len(data) < 20:
            raise MalformedPacket("IPv4 header cut short")
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        if ihl < 20 or total < ihl or len(data) < ihl:
            raise MalformedPacket("IPv4 header length inconsistent")
        if struct.unpack_from("!H", data, 6)[0] & 0x1FFF:
            return None  # a non-first fragment has no transport header
        proto = data[9]
        src_ip = inet_ntop(AF_INET, data[12:16])
        dst_ip = inet_ntop(AF_INET, data[16:20])
        body = data[ihl:total]
    elif ethertype == ETH_P_IPV6:
        if len(data) < 40:
            raise MalformedPacket("IPv6 header cut short")
        payload_len = struct.unpack_from("!H", data, 4)[0]
        proto = data[6]
        src_ip = inet_ntop(AF_INET6, data[8:24])
        dst_ip = inet_ntop(AF_INET6, data[24:40])
        body = data[40 : 40 + payload_len]
    else:
        return None
    if proto == _UDP:
        return _udp(body, src_ip, dst_ip)
    if proto == _TCP:
        return _tcp(body, src_ip, dst_ip)
    return None


def _udp(body: bytes, src_ip: str, dst_ip: str) -> DnsSegment:
    if len(body) < 8:
        raise MalformedPacket("UDP header cut short")
    sport, dport = _PORTS.unpack_from(body)
    length = struct.unpack_from("!H", body, 4)[0]
    if length < 8 or length > len(body):
        raise MalformedPacket("UDP length inconsistent")
    return DnsSegment((src_ip, sport), (dst_ip, dport), "udp", (body[8:length],))


def _tcp(body: bytes, src_ip: str, dst_ip: str) -> DnsSegment:
    if len(body) < 20:
        raise MalformedPacket("TCP header cut short")
    sport, dport = _PORTS.unpack_from(body)
    offset = (body[12] >> 4) * 4
    if offset < 20 or offset > len(body):
        raise MalformedPacket("TCP data offset inconsistent")
    stream = body[offset:]
    messages: list[bytes] = []
    position = 0
    partial = False
    while position < len(stream):
        if position + 2 > len(stream):
            partial = True
            break
        size = struct.unpack_from("!H", stream, position)[0]
        end = position + 2 + size
        if end > len(stream):
            partial = True
            break
        messages.append(stream[position + 2 : end])
        position = end
    return DnsSegment((src_ip, sport), (dst_ip, dport), "tcp", tuple(messages), partial)
