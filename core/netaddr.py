"""Address facts shared by the agent and the collector."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses, IPv4-mapped IPv6 included
    (``::ffff:127.0.0.1``); False for names, other addresses and ``None``."""
    if not host:
        return False
    text = host.strip("[]")
    if text.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
