"""Talking to the real DNS servers tests start (dnsmasq, small Python servers)."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.query


def answers(server: str, port: int = 53, qname: str = "ready.example") -> bool:
    """True if the server at ``server:port`` answers a query at all (any rcode): it is up."""
    try:
        dns.query.udp(dns.message.make_query(qname, "A"), server, 0.2, port)
    except (dns.exception.Timeout, OSError):
        return False
    return True
