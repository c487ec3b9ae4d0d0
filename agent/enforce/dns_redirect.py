"""Every outbound DNS query to the agent's resolver: an nftables table the agent owns.

``[sensors] dns = "auto"`` (Linux, root, enforce mode) runs the enforcing resolver and installs
table ``inet proscribe_dns``::

    set alive { type inet_proto; flags timeout; }      # {tcp, udp}, refreshed by the agent
    chain nat_out { type nat hook output priority -100;
        meta mark MARK return                           # the agent's own upstream queries
        meta nfproto ipv4 meta l4proto @alive th dport 53 dnat ip to 127.0.0.1:PORT
        meta nfproto ipv6 meta l4proto @alive th dport 53 dnat ip6 to [::1]:PORT }
    chain filter_out { type filter hook output priority 0;      # block_encrypted only
        meta mark MARK return
        meta mark REJECT_MARK ... reject                        # the agent's verdict
        meta l4proto @alive tcp dport 853 jump tls_853
        meta l4proto @alive udp dport 853 queue num Q bypass    # DoQ
        ip daddr @doh4 meta l4proto @alive th dport 443 queue num Q bypass }  # known DoH
    chain tls_853 {
        tcp flags & (syn|ack) == syn queue num Q bypass
        tcp doff D meta length > IP+4D queue num Q bypass }  # ClientHello: any segment with
                                     # data, one rule per data offset D (5..15) and family

so a program asking any resolver, at any address, as any user, is answered by the policy. The
agent's proxy marks its upstream sockets (``SO_MARK``) and is let through. Rejections are
``tcp reset`` / ICMP port-unreachable so clients fall back to port 53 at once. Each attempt's
first packet goes through the agent's queue first (``sensors/dns/encrypted_block.py``): it is
attributed while the sender's socket is still connecting, handed back with ``REJECT_MARK`` and
rejected on its second pass, and reported as ``denied`` with its process. TCP to 853 is the
exception: its SYN is queued and accepted (attributed), and its first packet carrying data,
the TLS ClientHello, is the one rejected, after the agent read its ALPN (DoT or DoH served on
853). Without the ``queue`` expression (``log_group``), the kernel rejects on its own and
copies the same packets to NFLOG.

**Crash safety.** Every rule needs ``meta l4proto @alive``: the set's two elements carry a
timeout (``ttl``, 15 s) that the agent renews every ``refresh`` seconds (one atomic batch:
add, delete, add). If the agent dies, is killed or hangs, the elements expire and every rule
stops matching: DNS flows to the resolvers programs asked, as if the agent were not installed.
A flow already redirected keeps its conntrack binding until that expires (UDP: 30 s); clients
use a new source port per query, so new queries are not affected. At stop the table is deleted;
the installer's uninstall deletes it too (``nft delete table inet proscribe_dns``). At start an
old table (a crashed run) is replaced in the same batch.

If the table disappears while the agent runs (someone deleted it), the next renewal fails, the
table is put back and ``restored`` is counted (status shows it).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from proscribe.agent.counters import Counters

__all__ = [
    "AGENT_MARK",
    "DEFAULT_QUEUE",
    "REJECT_MARK",
    "STUB_RESOLVER_ACCOUNTS",
    "TABLE",
    "DnsRedirect",
    "NftRunner",
    "redirect_commands",
    "stub_resolver_uids",
]

log = logging.getLogger(__name__)

TABLE = "proscribe_dns"
AGENT_MARK = 0x70726F73  # "pros": SO_MARK on the agent's own upstream sockets
DEFAULT_QUEUE = 5353  # NFQUEUE number the encrypted-DNS attempts are read from
REJECT_MARK = 0x70726F74  # "prot": the agent's verdict on a queued attempt: reject it
_FAMILY = "inet"


# Accounts local stub resolvers run as on Debian, Ubuntu and Fedora.
STUB_RESOLVER_ACCOUNTS = ("systemd-resolve", "dnsmasq", "unbound", "bind", "named", "pdns")


def stub_resolver_uids(accounts: Iterable[str] = STUB_RESOLVER_ACCOUNTS) -> list[int]:
    """The uids of those accounts that exist here (none may be root)."""
    import pwd

    uids = []
    for account in accounts:
        try:
            uid = pwd.getpwnam(account).pw_uid
        except KeyError:
            continue
        if uid != 0:
            uids.append(uid)
    return uids


class NftRunner(Protocol):
    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any] | None: ...


def _alive_elements(ttl: int) -> list[dict[str, Any]]:
    return [{"elem": {"val": proto, "timeout": ttl}} for proto in ("tcp", "udp")]


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


_ALIVE = _match({"meta": {"key": "l4proto"}}, "@alive")
# nftables accepts a port in dnat only after a protocol match it recognises (not a set lookup)
_TCP_OR_UDP = _match({"meta": {"key": "l4proto"}}, {"set": ["tcp", "udp"]})


# A SYN (not a SYN-ACK): the start of a connection.
_SYN_ONLY = _match(
    {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}, "syn"
)
# A TCP segment that carries data, whatever its size: longer than its IP header (20 bytes; 40
# for IPv6) plus its TCP header (data offset x 4), one rule per data offset. A size threshold
# ("longer than any header") let a client that sends its TLS records in tiny segments
# (TCP_NODELAY, a small MSS) through untouched. IP options or IPv6 extension headers count as
# data here: such a connection to 853 is reset at its first packet after the SYN (fails closed).
_TLS_CHAIN = "tls_853"  # TCP to port 853, jumped to from filter_out
_HAS_DATA = [
    [
        _match({"meta": {"key": "nfproto"}}, family),
        _match({"payload": {"protocol": "tcp", "field": "doff"}}, doff),
        _match({"meta": {"key": "length"}}, ip_header + 4 * doff, ">"),
    ]
    for family, ip_header in (("ipv4", 20), ("ipv6", 40))
    for doff in range(5, 16)
]


def _dport(port: int) -> dict[str, Any]:
    return _match({"payload": {"protocol": "th", "field": "dport"}}, port)


def _rule(table: str, chain: str, expr: list[dict[str, Any]]) -> dict[str, Any]:
    return {"add": {"rule": {"family": _FAMILY, "table": table, "chain": chain, "expr": expr}}}


def _rejects(expr: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``expr`` then reject: TCP reset for TCP, ICMP port-unreachable for UDP."""
    return [
        [*expr, _match({"meta": {"key": "l4proto"}}, "tcp"), {"reject": {"type": "tcp reset"}}],
        [
            *expr,
            _match({"meta": {"key": "l4proto"}}, "udp"),
            {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
        ],
    ]


def redirect_commands(
    *,
    port: int,
    ipv6: bool,
    mark: int = AGENT_MARK,
    ttl: int = 15,
    block_encrypted: bool = False,
    doh_resolvers: Iterable[str] = (),
    queue: int | None = DEFAULT_QUEUE,
    reject_mark: int = REJECT_MARK,
    log_group: int | None = None,
    exempt_uids: Iterable[int] = (),
    table: str = TABLE,
) -> list[dict[str, Any]]:
    """The whole table as one batch: an old copy replaced, then every set, chain and rule.

    ``exempt_uids``: local stub resolvers' accounts (systemd-resolved, dnsmasq, unbound,
    named): their upstream queries leave as asked. Applications' queries to the stub are
    still redirected, and the agent's resolver forwards them to the stub (its upstream), so
    the stub's own forward must not come back to the agent (a loop)."""
    ident = {"family": _FAMILY, "name": table}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": dict(ident)}},  # so that the delete cannot fail
        {"delete": {"table": dict(ident)}},
        {"add": {"table": dict(ident)}},
        {
            "add": {
                "set": {
                    "family": _FAMILY,
                    "table": table,
                    "name": "alive",
                    "type": "inet_proto",
                    "flags": ["timeout"],
                }
            }
        },
        {
            "add": {
                "chain": {
                    "family": _FAMILY,
                    "table": table,
                    "name": "nat_out",
                    "type": "nat",
                    "hook": "output",
                    "prio": -100,
                    "policy": "accept",
                }
            }
        },
    ]
    own = _match({"meta": {"key": "mark"}}, mark)
    cmds.append(_rule(table, "nat_out", [own, {"return": None}]))
    uids = sorted(set(exempt_uids))
    if uids:
        stub = _match({"meta": {"key": "skuid"}}, {"set": uids} if len(uids) > 1 else uids[0])
        cmds.append(_rule(table, "nat_out", [stub, {"return": None}]))
    cmds.append(
        _rule(
            table,
            "nat_out",
            [
                _match({"meta": {"key": "nfproto"}}, "ipv4"),
                _TCP_OR_UDP,
                _ALIVE,
                _dport(53),
                {"dnat": {"family": "ip", "addr": "127.0.0.1", "port": port}},
            ],
        )
    )
    if ipv6:
        cmds.append(
            _rule(
                table,
                "nat_out",
                [
                    _match({"meta": {"key": "nfproto"}}, "ipv6"),
                    _TCP_OR_UDP,
                    _ALIVE,
                    _dport(53),
                    {"dnat": {"family": "ip6", "addr": "::1", "port": port}},
                ],
            )
        )
    if block_encrypted:
        v4 = sorted({a for a in doh_resolvers if ipaddress.ip_address(a).version == 4})
        v6 = sorted({a for a in doh_resolvers if ipaddress.ip_address(a).version == 6})
        for name, kind, members in (("doh4", "ipv4_addr", v4), ("doh6", "ipv6_addr", v6)):
            spec: dict[str, Any] = {"family": _FAMILY, "table": table, "name": name, "type": kind}
            if members:
                spec["elem"] = members
            cmds.append({"add": {"set": spec}})
        cmds.append(
            {
                "add": {
                    "chain": {
                        "family": _FAMILY,
                        "table": table,
                        "name": "filter_out",
                        "type": "filter",
                        "hook": "output",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            }
        )
        cmds.append(_rule(table, "filter_out", [own, {"return": None}]))
        # TLS to 853 (DoT, or DoH served there): the handshake passes, the first packet with
        # data (the ClientHello, whose ALPN tells DoT from DoH) is rejected; the SYN is seen
        # (copied or queued) so that the attempt is attributed and reported even if it fails.
        # Its rules (one per TCP data offset) live in their own chain, so that every other
        # packet leaving the host passes one rule for them, not all of them.
        cmds.append({"add": {"chain": {"family": _FAMILY, "table": table, "name": _TLS_CHAIN}}})
        tls = [_ALIVE, _match({"meta": {"key": "l4proto"}}, "tcp"), _dport(853)]
        to_tls_chain = _rule(table, "filter_out", [*tls, {"jump": {"target": _TLS_CHAIN}}])
        # everything else on its first packet: UDP 853 (DoQ), the DoH resolvers' 443
        udp_853 = [_ALIVE, _match({"meta": {"key": "l4proto"}}, "udp"), _dport(853)]
        attempts = []
        for set_name, proto in (("doh4", "ip"), ("doh6", "ip6")):
            address = _match({"payload": {"protocol": proto, "field": "daddr"}}, f"@{set_name}")
            attempts.append([_ALIVE, address, _dport(443)])
        if queue is None:  # reject at once; a copy to NFLOG when there is a group
            logged = []
            if log_group is not None:
                logged = [{"log": {"group": log_group, "queue-threshold": 1}}]
                cmds.append(_rule(table, _TLS_CHAIN, [_SYN_ONLY, *logged]))
            for data in _HAS_DATA:
                reset = {"reject": {"type": "tcp reset"}}
                cmds.append(_rule(table, _TLS_CHAIN, [*data, *logged, reset]))
            cmds.append(to_tls_chain)
            cmds.append(_rule(table, "filter_out", _rejects([*udp_853, *logged])[1]))
            for expr in attempts:
                for rule in _rejects([*expr, *logged]):
                    cmds.append(_rule(table, "filter_out", rule))
        else:
            # the agent reads the packet (attributing its sender) and hands it back: a SYN to
            # 853 accepted, anything else marked, and the second pass rejects it; with no
            # reader the queue lets it through
            for rule in _rejects([_match({"meta": {"key": "mark"}}, reject_mark)]):
                cmds.append(_rule(table, "filter_out", rule))
            queued = {"queue": {"num": queue, "flags": ["bypass"]}}
            cmds.append(_rule(table, _TLS_CHAIN, [_SYN_ONLY, queued]))
            for data in _HAS_DATA:
                cmds.append(_rule(table, _TLS_CHAIN, [*data, queued]))
            cmds.append(to_tls_chain)
            for expr in [udp_853, *attempts]:
                cmds.append(_rule(table, "filter_out", [*expr, queued]))
    cmds.append(
        {
            "add": {
                "element": {
                    "family": _FAMILY,
                    "table": table,
                    "name": "alive",
                    "elem": _alive_elements(ttl),
                }
            }
        }
    )
    return cmds


def renew_commands(ttl: int, table: str = TABLE) -> list[dict[str, Any]]:
    """One batch that gives both ``alive`` elements a fresh timeout (add, delete, add: an
    ``add`` of an element that exists leaves its timeout; the first add makes the delete safe
    after an expiry)."""
    where = {"family": _FAMILY, "table": table, "name": "alive"}
    plain = [{"elem": {"val": p}} for p in ("tcp", "udp")]
    return [
        {"add": {"element": {**where, "elem": _alive_elements(ttl)}}},
        {"delete": {"element": {**where, "elem": plain}}},
        {"add": {"element": {**where, "elem": _alive_elements(ttl)}}},
    ]


def remove_commands(table: str = TABLE) -> list[dict[str, Any]]:
    ident = {"family": _FAMILY, "name": table}
    return [{"add": {"table": dict(ident)}}, {"delete": {"table": dict(ident)}}]


class DnsRedirect:
    """Installs the table, renews its liveness in a thread, removes it at stop."""

    def __init__(
        self,
        *,
        port: int,
        ipv6: bool,
        nft: NftRunner | None = None,
        mark: int = AGENT_MARK,
        ttl: int = 15,
        refresh: float = 3.0,
        block_encrypted: bool = False,
        doh_resolvers: Iterable[str] = (),
        queue: int | None = DEFAULT_QUEUE,
        log_group: int | None = None,
        exempt_uids: Iterable[int] = (),
        table: str = TABLE,
        on_restored: Callable[[str], None] | None = None,
    ) -> None:
        if refresh * 2 >= ttl:
            raise ValueError("refresh must be well under the ttl (a late renewal would lapse)")
        self._nft = nft
        self._install = redirect_commands(
            port=port,
            ipv6=ipv6,
            mark=mark,
            ttl=ttl,
            block_encrypted=block_encrypted,
            doh_resolvers=doh_resolvers,
            queue=queue,
            log_group=log_group,
            exempt_uids=exempt_uids,
            table=table,
        )
        self._renew = renew_commands(ttl, table)
        self._remove = remove_commands(table)
        self._refresh = refresh
        self._table = table
        self._on_restored = on_restored
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = Counters(("renewed", "renew_errors", "restored"))
        self.state = "stopped"
        self.block_encrypted = block_encrypted

    def _runner(self) -> NftRunner:
        if self._nft is None:
            from proscribe.agent.enforce._nftables_linux import Nftables

            self._nft = Nftables()
        return self._nft

    def start(self) -> None:
        """Install the table (raises ``OSError``/``RuntimeError`` with the reason)."""
        self._runner().run(self._install)
        self.state = "active"
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="dns-redirect", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Renew the liveness elements; put the table back if it was removed."""
        runner = self._runner()
        try:
            runner.run(self._renew)
            self.counts.add("renewed")
        except Exception as err:
            self.counts.add("renew_errors")
            log.warning("nftables table %s missing or broken (%s); restoring it", self._table, err)
            runner.run(self._install)
            self.counts.add("restored")
            if self._on_restored is not None:
                self._on_restored(str(err))

    def _loop(self) -> None:
        while not self._stopping.wait(self._refresh):
            try:
                self.renew()
            except Exception:
                log.exception("nftables DNS redirect could not be renewed")
                self.state = "failing"
            else:
                self.state = "active"

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.state == "stopped":
            return
        try:
            self._runner().run(self._remove)
        except Exception:
            log.exception("nftables table %s could not be removed", self._table)
        self.state = "stopped"
        close = getattr(self._nft, "close", None)
        if close is not None:
            close()

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "block_encrypted": self.block_encrypted,
            **self.counts.snapshot(),
        }
