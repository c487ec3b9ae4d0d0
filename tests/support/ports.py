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
    """A port on ``host`` free for UDP and for TCP at the moment: DNS servers (dnsmasq, unbound)
    listen on both and refuse to start when the TCP side is taken (a UDP-only check let a busy
    machine's outgoing connection hold the TCP port now and then)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _attempt in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port on {host} free for both UDP and TCP after 50 tries")


def bound_udp_and_tcp(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same port on ``host`` and kept open (for a server the
    test runs itself): a port the kernel gives for UDP can be taken for TCP, so try again."""
    for _attempt in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        return udp, tcp
    raise OSError(f"no port on {host} free for both UDP and TCP after 50 tries")
