"""Point the system resolver at the agent's DNS proxy, with a fail-safe, and undo it.

Two supported set-ups (docs/dns.md says which to use when):

* ``/etc/resolv.conf`` managed directly: the proxy first, the original nameservers after it,
  ``options timeout:1 attempts:2``. glibc asks the servers in order on every lookup; while the
  proxy runs it answers (a sinkholed name gets NXDOMAIN, which is final); when it is down the
  kernel answers the query with ICMP port-unreachable and glibc moves on to the original
  server at once, so resolution never breaks. The cost: while the proxy is down, nothing is
  enforced (the agent's heartbeat reports the DNS sensor's state).
* systemd-resolved: a drop-in with ``DNS=<proxy>`` and ``Domains=~.``. resolved keeps using a
  server that failed over, so no fallback server is listed there; instead the service's
  ``ExecStopPost=`` removes the drop-in and restarts resolved (see ``remove_resolved_dropin``).

Paths are parameters; every write is atomic (:func:`proscribe.core.fs.atomic_write`) and the
original resolv.conf is kept in a backup so ``restore_resolv_conf`` can put it back byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from proscribe.core.errors import ConfigError
from proscribe.core.fs import atomic_write

MARKER = "# proscribe: DNS proxy first, original resolvers as fallback"
RESOLVED_DROPIN = Path("/etc/systemd/resolved.conf.d/proscribe.conf")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, 0o644)  # resolv.conf and resolved's drop-in are world-readable


def nameservers(text: str) -> list[str]:
    return [
        parts[1]
        for parts in (line.split() for line in text.splitlines())
        if len(parts) >= 2 and parts[0] == "nameserver"
    ]


def resolv_conf_text(proxy_ip: str, original: str) -> str:
    """The new resolv.conf: proxy first, the original servers (max 2) after, other lines kept."""
    fallbacks = [ns for ns in nameservers(original) if ns != proxy_ip][:2]
    kept = [
        line
        for line in original.splitlines()
        if line.split()[:1] not in (["nameserver"], ["options"]) and line.strip() != MARKER
    ]
    lines = [MARKER, f"nameserver {proxy_ip}"]
    lines += [f"nameserver {ns}" for ns in fallbacks]
    lines += [line for line in kept if line.strip() and not line.startswith("#")]
    lines.append("options timeout:1 attempts:2")
    return "\n".join(lines) + "\n"


def install_resolv_conf(path: Path, proxy: tuple[str, int], backup: Path) -> str:
    """Point ``path`` at the proxy, keeping the original as fallback; returns the new text."""
    host, port = proxy
    if port != 53:
        raise ConfigError(
            f"[dns] proxy_listen {host}:{port}: resolv.conf cannot name a port; "
            "listen on port 53 or use the systemd-resolved drop-in (DNS=IP:PORT)"
        )
    if path.is_symlink():
        raise ConfigError(
            f"{path} is a symlink to {os.readlink(path)} (systemd-resolved or another "
            "manager owns it); use the systemd-resolved drop-in instead"
        )
    try:
        original = path.read_text()
    except FileNotFoundError:
        original = ""
    if MARKER not in original:
        _write(backup, original)
    elif backup.exists():
        original = backup.read_text()  # already installed: rebuild from the true original
    text = resolv_conf_text(host, original)
    _write(path, text)
    return text


def restore_resolv_conf(path: Path, backup: Path) -> bool:
    """Put the original back (True) or leave ``path`` alone when there is no backup (False)."""
    if not backup.exists():
        return False
    _write(path, backup.read_text())
    backup.unlink()
    return True


def resolved_dropin_text(proxy: tuple[str, int]) -> str:
    host, port = proxy
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        "# Written by proscribe: every lookup goes to the agent's enforcing DNS proxy.\n"
        "# The agent's service removes this file when it stops (ExecStopPost).\n"
        "[Resolve]\n"
        f"DNS={server}\n"
        "Domains=~.\n"
    )


def install_resolved_dropin(proxy: Sequence[object], path: Path = RESOLVED_DROPIN) -> None:
    host, port = str(proxy[0]), int(str(proxy[1]))
    _write(path, resolved_dropin_text((host, port)))


def remove_resolved_dropin(path: Path = RESOLVED_DROPIN) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
