"""The policy's blocked domains in the formats central resolvers load.

For devices that cannot run the agent (the DeepSeek phone app on the office Wi-Fi), the
organisation's resolvers enforce the same ban: ``proscribe policy export --format F`` and the
collector's ``GET /api/v1/policy/export?format=F`` write one of

* ``rpz``     — a Response Policy Zone (BIND, Unbound, PowerDNS Recursor, Knot Resolver):
                ``name CNAME .`` (NXDOMAIN) and ``*.name CNAME .`` for "name and subdomains";
* ``unbound`` — ``local-zone: "name." always_nxdomain`` lines (an ``include:`` file);
* ``dnsmasq`` — ``address=/name/`` lines (NXDOMAIN for the name and its subdomains);
* ``hosts``   — ``0.0.0.0 name`` lines (hosts files have no wildcards: subdomains are not
                covered; for Pi-hole's and AdGuard's "hosts" lists);
* ``adblock`` — ``||name^`` (name and subdomains) and ``|name^`` (exact), the AdGuard Home /
                Pi-hole v6 list syntax.

Only rules whose action is ``block`` are exported (``report`` rules are for evidence, which a
central resolver does not produce). Exemptions are per user and host, which a resolver cannot
see: they are not applied, and the header says so. An "=exact" entry stays exact where the
format can say it (rpz, adblock, hosts) and covers subdomains too where it cannot (unbound,
dnsmasq: the header lists these). Names come from the policy loader, normalized; anything not a
plain DNS name is left out (and counted in the header) rather than written into a resolver's
configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from proscribe.core.policy.model import Policy

__all__ = ["EXPORT_FORMATS", "blocked_names", "export_policy"]

EXPORT_FORMATS = ("rpz", "unbound", "dnsmasq", "hosts", "adblock")
_PLAIN_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class BlockedName:
    name: str
    exact: bool  # "=name" in the policy: the name only, not its subdomains
    rule_id: str


def blocked_names(policy: Policy) -> tuple[list[BlockedName], int]:
    """The names of the policy's ``block`` domain rules, in policy order without repeats,
    and how many entries were left out as not plain DNS names."""
    seen: set[tuple[str, bool]] = set()
    out: list[BlockedName] = []
    skipped = 0
    for rule in policy.domain:
        if rule.action != "block":
            continue
        for entry in rule.names:
            exact = entry.startswith("=")
            name = entry[1:] if exact else entry
            name = name.rstrip(".").lower()
            if not _PLAIN_NAME.match(name):
                skipped += 1
                continue
            if (name, exact) in seen:
                continue
            seen.add((name, exact))
            out.append(BlockedName(name, exact, rule.id))
    return out, skipped


def export_policy(policy: Policy, fmt: str) -> str:
    """The export in ``fmt`` (one of :data:`EXPORT_FORMATS`; ``ValueError`` otherwise)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    names, skipped = blocked_names(policy)
    comment = ";" if fmt == "rpz" else ("!" if fmt == "adblock" else "#")
    header = [
        f"{comment} Proscribe policy {policy.meta.id} serial {policy.meta.serial} "
        f"(sha256 {policy.sha256 or 'unknown'}): {len(names)} blocked name(s), format {fmt}",
        f"{comment} Generated from the signed policy's domain rules with action = block.",
        f"{comment} Not applied here: exemptions (per user and host) and report-only rules.",
    ]
    if skipped:
        header.append(f"{comment} {skipped} entr(y/ies) left out: not plain DNS names.")
    if fmt in ("unbound", "dnsmasq") and any(n.exact for n in names):
        header.append(f"{comment} This format cannot say 'exact': =name entries cover subdomains.")
    if fmt == "hosts":
        header.append(f"{comment} hosts files have no wildcards: subdomains are not covered.")
    body = list(_lines(fmt, names, policy.meta.serial))
    return "\n".join(header + body) + "\n"


def _lines(fmt: str, names: list[BlockedName], serial: int) -> Iterator[str]:
    if fmt == "rpz":
        yield "$TTL 300"
        yield f"@ IN SOA localhost. hostmaster.localhost. {serial} 3600 600 86400 300"
        yield "@ IN NS localhost."
        for n in names:
            yield f"{n.name} CNAME .  ; {n.rule_id}"
            if not n.exact:
                yield f"*.{n.name} CNAME .  ; {n.rule_id}"
    elif fmt == "unbound":
        yield "server:"
        for n in names:
            yield f'  local-zone: "{n.name}." always_nxdomain  # {n.rule_id}'
    elif fmt == "dnsmasq":
        for n in names:  # dnsmasq takes comments only on lines of their own
            yield f"# {n.rule_id}"
            yield f"address=/{n.name}/"
    elif fmt == "hosts":
        for n in names:
            yield f"0.0.0.0 {n.name}"
    else:  # adblock
        for n in names:
            yield f"{'|' if n.exact else '||'}{n.name}^"
