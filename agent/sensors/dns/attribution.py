"""Which process sent a DNS query: source port -> socket inode -> pid, from procfs.

``/proc/net/{udp,udp6,tcp,tcp6}`` map a local address and port to a socket inode (and uid);
``/proc/<pid>/fd/*`` links name the inode (``socket:[12345]``). The inode -> (pid, fd) map is
cached and each hit re-validated with one ``readlink`` (a pid can exit and be reused); a miss
rescans ``/proc`` in the order that finds the sender soonest (see ``_scan_for``).

Queries forwarded by a local stub resolver (systemd-resolved at 127.0.0.53, dnsmasq, unbound,
named, or this agent's own proxy) are marked ``forwarded`` and not attributed to the stub: the
application's own query to the stub is the one that carries the process.

The procfs root is a parameter; the tables are those of the caller's network namespace.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from proscribe.agent.sensors.enrich import Enricher, ProcessRef, process_ref
from proscribe.agent.sensors.users import UserNames
from proscribe.core.policy.matchers.process import ProcessFacts

if TYPE_CHECKING:
    from proscribe.agent.sensors.dns._sockdiag_linux import SockDiag

log = logging.getLogger(__name__)

STUB_RESOLVER_NAMES = frozenset(
    {"systemd-resolve", "systemd-resolved", "dnsmasq", "unbound", "named"}
)
REASON_NO_SOCKET = "socket closed before lookup (no local socket has that address and port)"
REASON_NO_OWNER = "socket owner not found (process exited or lives in another pid namespace)"
REASON_FORWARDED = "forwarded by a local stub resolver; the application's query carries the process"
_MAX_CACHE = 65536
_RECENT_OWNERS = 16
_YOUNG_SCANNED = 32  # at most this many young pids scanned per lookup (the newest)


class _Sender(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def comm(self) -> str: ...


class SenderLookup(Protocol):
    """What the attributor asks first (:class:`~.sender_map.SenderMap`)."""

    def lookup(self, transport: str, ip: str, port: int) -> _Sender | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Attribution:
    """The outcome of one lookup: a process, or ``None`` and the reason."""

    process: ProcessRef | None
    reason: str | None = None
    forwarded: bool = False


def _hex_address(ip: str) -> tuple[str, str]:
    """An address as it appears in /proc/net/udp and in /proc/net/udp6 (v4-mapped there)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        v4 = addr.packed[::-1].hex().upper()
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}").packed
    else:
        v4 = ""
        mapped = addr.packed
    words = [mapped[i : i + 4][::-1].hex().upper() for i in range(0, 16, 4)]
    return v4, "".join(words)


_WILDCARDS = {"00000000", "0" * 32}


class SocketTable:
    """Finds the inode and uid of a local socket from /proc/net."""

    def __init__(self, procfs: Path = Path("/proc")) -> None:
        self._net = procfs / "net"

    def find(
        self, transport: str, local_ip: str, local_port: int, remote: tuple[str, int] | None = None
    ) -> tuple[int, int] | None:
        """``(inode, uid)`` of the socket bound to ``local_ip:local_port`` (TCP: and ``remote``)."""
        v4, v6 = _hex_address(local_ip)
        port = f":{local_port:04X}"
        want_remote: tuple[str, str] | None = None
        if remote is not None and transport == "tcp":
            rv4, rv6 = _hex_address(remote[0])
            rport = f":{remote[1]:04X}"
            want_remote = (rv4 + rport, rv6 + rport)
        tables = (f"{transport}", f"{transport}6") if v4 else (f"{transport}6",)
        for table in tables:
            address = (v4 if table == transport else v6) + port
            found = self._scan(table, address, port, want_remote)
            if found is not None:
                return found
        return None

    def _scan(
        self, table: str, address: str, port: str, want_remote: tuple[str, str] | None
    ) -> tuple[int, int] | None:
        try:
            data = (self._net / table).read_bytes().decode("ascii", "replace")
        except OSError:
            return None
        wildcard: tuple[int, int] | None = None
        for line in data.splitlines()[1:]:
            if port not in line:
                continue
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote = fields[1], fields[2]
            if not local.endswith(port):
                continue
            if want_remote is not None and remote not in want_remote:
                continue
            hit = (int(fields[9]), int(fields[7]))
            if hit[0] == 0:
                continue  # TIME_WAIT and friends have no inode
            if local == address:
                return hit
            if local.split(":")[0] in _WILDCARDS and wildcard is None:
                wildcard = hit
        return wildcard


class ProcessAttributor:
    """Turns a client address into a process reference (or a reason), with short-lived caches."""

    def __init__(
        self,
        procfs: Path = Path("/proc"),
        *,
        stub_names: Collection[str] = STUB_RESOLVER_NAMES,
        forwarder_pids: Collection[int] = (),
        clock: Callable[[], float] = time.monotonic,
        process_ttl: float = 2.0,
        use_sock_diag: bool | None = None,
        full_scan_interval: float = 0.25,
        users: UserNames | None = None,
        senders: SenderLookup | None = None,
    ) -> None:
        self._procfs = procfs
        # The kernel's record of each query's sender (sender_map.SenderMap), asked first.
        self._senders = senders
        self.kernel_hits = 0
        self.kernel_error: str | None = None  # why the sender map is not used
        self._reader = Enricher(procfs, users=users)
        self._proc = str(procfs)  # string joins: pathlib costs microseconds per lookup
        self._sockets = SocketTable(procfs)
        # sock_diag answers for this process's own namespaces, so only with the real /proc.
        if use_sock_diag is None:
            use_sock_diag = procfs == Path("/proc")
        self._diag = _open_sock_diag() if use_sock_diag else None
        self._stub_names = frozenset(stub_names)
        self._forwarder_pids = set(forwarder_pids)
        self._clock = clock
        self._process_ttl = process_ttl
        self._owners: dict[int, tuple[int, str]] = {}  # inode -> (pid, fd)
        # (transport, ip, port) -> (inode, pid, fd)
        self._by_address: dict[tuple[str, str, int], tuple[int, int, str]] = {}
        self._recent_owners: OrderedDict[int, None] = OrderedDict()  # pids that sent queries
        self._first_seen: dict[int, float] = {}  # pid -> when a scan first listed it
        self._young_for = 2.0
        self._last_full_scan = -1e9
        self._full_scan_interval = full_scan_interval
        self.skipped_scans = 0
        self._processes: dict[int, tuple[float, ProcessRef]] = {}
        self.scans = 0

    @property
    def source(self) -> str:
        """Which attribution is active: "ebpf" (the kernel's sender map, /proc as fallback)
        or "proc" (socket tables and /proc only)."""
        return "ebpf" if self._senders is not None else "proc"

    def close(self) -> None:
        if self._senders is not None:
            self._senders.close()
            self._senders = None
        if self._diag is not None:
            self._diag.close()
            self._diag = None

    def add_forwarder_pid(self, pid: int) -> None:
        """A process whose outgoing queries are forwards (e.g. this agent's proxy)."""
        self._forwarder_pids.add(pid)

    def attribute(
        self, transport: str, client: tuple[str, int], server: tuple[str, int] | None = None
    ) -> Attribution:
        """Who owns the client's socket, looked up while that socket is still open.

        A client that keeps one socket (a browser, a stub, dnsperf) is answered from a cache
        of address -> (inode, pid, fd), checked with one ``readlink``: while that fd still
        names that socket inode, the inode still owns the address (a socket never changes
        its port), so the answer is exact without asking the kernel again.
        """
        if self._senders is not None:
            sender = self._senders.lookup(transport, client[0], client[1])
            if sender is not None:
                self.kernel_hits += 1
                process = self.describe(sender.pid)
                if process is None:
                    # gone already (dig exits within a millisecond of an instant answer): what
                    # the kernel recorded as it sent is still exact - pid, real uid, name
                    facts = ProcessFacts(
                        pid=sender.pid,
                        name=sender.comm,
                        uid=sender.uid,
                        user=self._reader.users.name(sender.uid),
                    )
                    process = process_ref(facts)
                return self._judge(sender.pid, process)
        key = (transport, client[0], client[1])
        cached = self._by_address.get(key)
        if cached is not None:
            inode, pid, fd = cached
            try:
                valid = os.readlink(f"{self._proc}/{pid}/fd/{fd}") == f"socket:[{inode}]"
            except OSError:
                valid = False
            if valid:
                return self._finish(pid)
            del self._by_address[key]
        try:
            found = None
            if self._diag is not None and server is not None:
                try:
                    found = self._diag.lookup(transport, client, server)
                except OSError:
                    log.debug("sock_diag lookup failed; using /proc/net", exc_info=True)
            if found is None:
                found = self._sockets.find(transport, client[0], client[1], server)
        except ValueError:
            return Attribution(None, f"not an IP address: {client[0]!r}")
        if found is None:
            return Attribution(None, REASON_NO_SOCKET)
        inode = found[0]  # the socket's uid is not the user: the owner's real uid is
        owner_pid = self._owner(inode)
        if owner_pid is None:
            return Attribution(None, REASON_NO_OWNER)
        owner = self._owners.get(inode)
        if owner is not None:
            if len(self._by_address) >= _MAX_CACHE:
                self._by_address.clear()
            self._by_address[key] = (inode, owner[0], owner[1])
        return self._finish(owner_pid)

    def _finish(self, pid: int) -> Attribution:
        process = self.describe(pid)
        if process is None:
            return Attribution(None, REASON_NO_OWNER)
        return self._judge(pid, process)

    def _judge(self, pid: int, process: ProcessRef) -> Attribution:
        if pid in self._forwarder_pids or process.get("name") in self._stub_names:
            return Attribution(None, REASON_FORWARDED, forwarded=True)
        return Attribution(process)

    # -- inode -> pid ---------------------------------------------------------------------------

    def _owner(self, inode: int) -> int | None:
        cached = self._owners.get(inode)
        target = f"socket:[{inode}]"
        if cached is not None:
            pid, fd = cached
            try:
                if os.readlink(f"{self._proc}/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                pass
            del self._owners[inode]
        return self._scan_for(target)

    def _scan_for(self, target: str) -> int | None:
        """Find the owner of ``target``, cheapest places first.

        1. the few pids that recently owned query sockets (a stub resolver or a browser opens
           a fresh socket per query);
        2. young pids, first listed within the last 2 s (the sender of a fresh query is
           usually a young process such as ``dig`` or ``curl``), newest first — by when they
           appeared, not by number, so this still works once pids have wrapped around;
        3. every pid, at most once per ``full_scan_interval``: a full scan costs milliseconds
           per hundred processes, and the capture thread must keep up with the traffic.
        """
        self.scans += 1
        if len(self._owners) > _MAX_CACHE:
            self._owners.clear()
        for pid in list(self._recent_owners):
            if self._scan_pid(pid, target):
                return pid
        try:
            pids = sorted((int(p) for p in os.listdir(self._proc) if p.isdigit()), reverse=True)
        except OSError:
            return None
        # Young pids: first seen within ``young_for`` seconds, whatever their number (after the
        # pid counter wraps a new process has a *smaller* pid than older ones, so "newer than
        # the largest seen" never matches again), newest first. Not merely "absent at the
        # previous scan": at 50 queries a second a scan often lists a dig that has not opened
        # its socket yet, and it must still count as young at the next lookup.
        now = self._clock()
        first_seen = self._first_seen
        alive = set(pids)
        for pid in [p for p in first_seen if p not in alive]:
            del first_seen[pid]
        for pid in pids:
            if pid not in first_seen:
                first_seen[pid] = now
        # newest first; among pids first listed together (the first scan lists them all),
        # the higher pid first (without a wrap, the younger)
        young = sorted(
            (p for p, seen in first_seen.items() if now - seen <= self._young_for),
            key=lambda p: (-first_seen[p], -p),
        )[:_YOUNG_SCANNED]
        for pid in young:
            if self._scan_pid(pid, target):
                return pid
        young_set = set(young)
        if now - self._last_full_scan < self._full_scan_interval:
            self.skipped_scans += 1
            return None
        self._last_full_scan = now
        for pid in pids:
            if (
                pid not in young_set
                and pid not in self._recent_owners
                and self._scan_pid(pid, target)
            ):
                return pid
        return None

    def _scan_pid(self, pid: int, target: str) -> bool:
        """Record every socket ``pid`` holds; true when one of them is ``target``."""
        fd_dir = f"{self._proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            self._recent_owners.pop(pid, None)
            return False
        found = False
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                self._owners[int(link[8:-1])] = (pid, fd)
                found = found or link == target
        if found:
            self._recent_owners[pid] = None
            self._recent_owners.move_to_end(pid)
            while len(self._recent_owners) > _RECENT_OWNERS:
                self._recent_owners.popitem(last=False)
        return found

    # -- pid -> process reference ---------------------------------------------------------------

    def describe(self, pid: int) -> ProcessRef | None:
        """The event's ``process`` object for a live pid (its user: the real uid's account, as
        for every process the agent reports), cached for ``process_ttl``."""
        now = self._clock()
        cached = self._processes.get(pid)
        if cached is not None and now - cached[0] < self._process_ttl:
            return cached[1]
        facts = self._reader.facts(pid)
        if facts is None:
            return None
        process = process_ref(facts)
        if len(self._processes) > 4096:
            self._processes.clear()
        self._processes[pid] = (now, process)
        return process


def _open_sock_diag() -> SockDiag | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        from proscribe.agent.sensors.dns._sockdiag_linux import SockDiag as _SockDiag

        return _SockDiag()
    except OSError:
        log.info("NETLINK_SOCK_DIAG unavailable; attribution reads /proc/net", exc_info=True)
        return None
