"""Free loopback ports for servers a test or benchmark starts.

The kernel picks a port that is free now; the socket is closed before the port is handed out,
so another process could take it in between. Servers that can bind port 0 themselves and report
the port (``DnsProxy``, ``ThreadingHTTPServer``) should do that instead.
"""

from __future__ import annotations

import socket


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on at the moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on ``host`` that nothing is bound to at the moment (for DNS servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
