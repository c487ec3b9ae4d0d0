"""Linux packet socket: ``AF_PACKET``/``SOCK_DGRAM`` on all interfaces with the DNS BPF filter."""

from __future__ import annotations

import ctypes
import socket
import struct

from proscribe.agent.sensors.dns.bpf import dns_filter, pack

ETH_P_ALL = 0x0003
SOL_SOCKET = socket.SOL_SOCKET
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4


def open_dns_socket(rcvbuf: int = 8 << 20, loopback: str = "lo") -> socket.socket:
    """A packet socket that only ever sees DNS packets (raises ``OSError``, e.g. EPERM)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    try:
        try:
            lo_index = socket.if_nametoindex(loopback)
        except OSError:
            lo_index = 0
        code = pack(dns_filter(lo_index))
        buf = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
        sock.setsockopt(SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        try:
            sock.setsockopt(SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        # Packets queued between socket() and the filter were not filtered: drop them.
        sock.setblocking(False)
        try:
            while True:
                sock.recv(65535)
        except BlockingIOError:
            pass
        read_kernel_stats(sock)  # reset the counters, which include those packets
        return sock
    except BaseException:
        sock.close()
        raise


def read_kernel_stats(sock: socket.socket) -> tuple[int, int]:
    """``(packets, drops)`` since the last call (the kernel resets them on read)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    packets, drops = struct.unpack("II", raw)
    return packets, drops
