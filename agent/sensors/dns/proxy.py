"""The enforcing resolver: a forwarding DNS proxy that sinkholes denied names.

UDP is served by its own thread (a plain epoll loop), TCP and the TCP retries of truncated
answers by an asyncio loop in a second thread, on the same listen address. For each query:

1. parse it (malformed: FORMERR if there is a header to answer, else dropped; counted);
2. ``use-application-dns.net`` (Firefox's DoH canary) gets NXDOMAIN at once;
3. ``decide(qname, None)``: no rule matches -> forward at once and attribute the client while
   the upstream answers; a rule matches -> attribute first (the exemption may depend on the
   user), then ``decide(qname, process)``;
4. blocked (enforce mode) -> NXDOMAIN with a 60 s negative TTL (SOA) and, when the client speaks
   EDNS, Extended DNS Error 15 "Blocked" naming the rule; otherwise forwarded over UDP with
   transaction-id remapping, TCP retry when the answer is truncated, next upstream on timeout;
5. every CNAME target in the answer is decided too (CNAME cloaking) before the answer is relayed.

Either way the client is attributed before it gets its reply, so its socket is still open.
Each query that matters yields one :class:`DnsObservation` handed to ``on_observation`` off the
hot path.

The UDP sockets are not asyncio datagram transports: each wake-up drains a ready socket (up to
``_BATCH`` datagrams, non-blocking ``recvfrom_into`` into one preallocated buffer). asyncio's
transport reads every datagram into a fresh 256 KiB buffer, which glibc serves with
``mmap``/``mremap``/``munmap``: three syscalls and page faults per datagram, the largest cost
the profile showed; its loop iteration was the next one. A query no rule matches, answered
without a CNAME, builds no observation at all (the agent records nothing about it), and the
NXDOMAIN for a denied name is written from the query's bytes (dnspython only for unusual
shapes).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import random
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from proscribe.agent.sensors.dns.attribution import Attribution, ProcessAttributor
from proscribe.agent.sensors.dns.message import (
    DnsMessageFacts,
    MalformedDnsMessage,
    parse_message,
)
from proscribe.agent.sensors.dns.observation import (
    Decide,
    DnsObservation,
    NameVerdict,
    ObservationSink,
)
from proscribe.agent.worker import BackgroundWorker
from proscribe.core.errors import ConfigError

log = logging.getLogger(__name__)

CANARY = "use-application-dns.net"
BLOCKED_TTL = 60
_SOA = "proscribe.invalid. hostmaster.proscribe.invalid. 1 3600 600 86400 {ttl}"
_SWEEP_SECONDS = 0.25
# TYPE=CNAME CLASS=IN as they appear after an owner name; absent -> the answer has no CNAME.
_CNAME_IN = struct.pack("!HH", 5, 1)
_SO_MARK = getattr(socket, "SO_MARK", 36)
_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h: the address before the redirect (TCP)
_RCODE_TEXT = {int(code): dns.rcode.to_text(code) for code in dns.rcode.Rcode if int(code) < 16}
_RECV_SIZE = 65535  # the largest UDP payload: nothing is ever cut
_BATCH = 64  # datagrams read per wake-up and socket, so one busy socket cannot starve the rest
_ID = struct.Struct("!H")


@dataclass(slots=True)
class _Pending:
    client: tuple[str, int]
    query: bytes
    facts: DnsMessageFacts
    # None while no rule matched the question (built only if the answer needs reporting)
    observation: DnsObservation | None
    attribution: Attribution | None
    started: float
    upstream_index: int
    time: float  # wall clock when the query came in (the observation's time)


def blocked_response(query: bytes, rule_id: str | None, ttl: int = BLOCKED_TTL) -> bytes:
    """NXDOMAIN for ``query`` with a negative-TTL SOA and, under EDNS, EDE 15 naming the rule."""
    fast = _blocked_response_fast(query, rule_id, ttl)
    if fast is not None:
        return fast
    return _blocked_response_dnspython(query, rule_id, ttl)


_SOA_NAMES = b"\x09proscribe\x07invalid\x00\x0ahostmaster\x09proscribe\x07invalid\x00"
_SOA_TIMERS = struct.Struct("!IIIII")
_RR_HEAD = struct.Struct("!HHIH")  # type, class, ttl, rdlength (after the owner name)
_OPT_TYPE = 41
_OPT_PADDING = 12
_EDE_OPTION = 15
_EDE_BLOCKED = 15
_MAKE_RESPONSE_PAYLOAD = 8192  # what dns.message.make_response offers when the query has EDNS


def _blocked_response_fast(query: bytes, rule_id: str | None, ttl: int) -> bytes | None:
    """The same answer as :func:`_blocked_response_dnspython`, built from the query's bytes
    for the common shape (standard query, one question without compression, no answer or
    authority records, at most an OPT record without padding); ``None`` for anything else.
    dnspython takes ~0.4 ms per blocked answer here, most of the cost of a denied query."""
    size = len(query)
    if size < 17:
        return None
    msg_id, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHHH", query)
    if flags & 0xF800 or qdcount != 1 or ancount or nscount or arcount > 1:
        return None  # a response, another opcode, or a shape left to dnspython
    offset = 12
    while True:
        if offset >= size:
            return None
        label = query[offset]
        if label == 0:
            offset += 1
            break
        if label > 63:
            return None  # compression (or a bad label) in a query's only name: dnspython
        offset += 1 + label
    end = offset + 4  # QTYPE, QCLASS
    if end > size:
        return None
    payload: int | None = None
    if arcount:
        # One additional record: only an OPT with the root owner is handled here.
        if end + 11 > size or query[end] != 0:
            return None
        rtype, rclass, _ttl, rdlen = _RR_HEAD.unpack_from(query, end + 1)
        if rtype != _OPT_TYPE or end + 11 + rdlen != size:
            return None
        position = end + 11
        while position < size:
            if position + 4 > size:
                return None
            code, length = struct.unpack_from("!HH", query, position)
            if code == _OPT_PADDING:
                return None  # make_response pads the answer (RFC 8467): dnspython does that
            position += 4 + length
        if position != size:
            return None
        payload = rclass
    out_flags = 0x8000 | (flags & 0x0100) | 0x0080 | 3  # QR, RD copied, RA, NXDOMAIN
    soa = _SOA_NAMES + _SOA_TIMERS.pack(1, 3600, 600, 86400, ttl)
    parts = [
        struct.pack("!HHHHHH", msg_id, out_flags, 1, 0, 1, 0 if payload is None else 1),
        query[12:end],
        b"\xc0\x0c",  # the SOA's owner: the question name
        _RR_HEAD.pack(6, 1, ttl, len(soa)),
        soa,
    ]
    if payload is not None:
        if rule_id is not None:
            text = f"blocked by policy rule {rule_id}".encode()
            option = struct.pack("!HHH", _EDE_OPTION, 2 + len(text), _EDE_BLOCKED) + text
            parts += [b"\x00", _RR_HEAD.pack(_OPT_TYPE, max(payload, 512), 0, len(option)), option]
        else:
            parts += [b"\x00", _RR_HEAD.pack(_OPT_TYPE, _MAKE_RESPONSE_PAYLOAD, 0, 0)]
    return b"".join(parts)


def _blocked_response_dnspython(query: bytes, rule_id: str | None, ttl: int) -> bytes:
    request = dns.message.from_wire(query, ignore_trailing=True)
    response = dns.message.make_response(request)
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.flags |= dns.flags.RA
    qname = request.question[0].name
    response.authority.append(
        dns.rrset.from_text(qname, ttl, dns.rdataclass.IN, dns.rdatatype.SOA, _SOA.format(ttl=ttl))
    )
    if rule_id is not None and request.edns >= 0:
        text = f"blocked by policy rule {rule_id}"
        response.use_edns(
            0,
            payload=max(request.payload, 512),
            options=[dns.edns.EDEOption(dns.edns.EDECode.BLOCKED, text)],
        )
    return response.to_wire()


def _header_only_error(query: bytes, rcode: int) -> bytes | None:
    """A bare reply (same id, no sections) for a query that cannot be parsed: neither by
    :func:`parse_message` nor, when building the block answer, by dnspython."""
    if len(query) < 12:
        return None
    msg_id, flags = struct.unpack_from("!HH", query)
    if flags & 0x8000:
        return None  # never answer a response: no reflection loops
    return struct.pack("!HHHHHH", msg_id, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)


class DnsProxy:
    """Forwarding, enforcing resolver. ``start()`` binds (``ConfigError`` if it cannot)."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstreams: Sequence[tuple[str, int]],
        decide: Decide,
        on_observation: ObservationSink,
        *,
        attributor: ProcessAttributor | None = None,
        mode: str = "enforce",
        timeout: float = 2.0,
        blocked_ttl: int = BLOCKED_TTL,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10_000,
        mark: int | None = None,
        attribute_unmatched: bool = True,
    ) -> None:
        if mode not in ("enforce", "monitor"):
            raise ValueError(f"mode must be enforce or monitor, not {mode!r}")
        if not upstreams:
            raise ConfigError("[dns] upstreams: empty; give at least one resolver address")
        self._listen = listen
        self._upstreams = list(upstreams)
        self._decide = decide
        self._attributor = attributor
        self._mode = mode
        self._timeout = timeout
        self._blocked_ttl = blocked_ttl
        self._clock = clock
        # SO_MARK on every upstream socket: the agent's nftables redirect lets marked packets
        # through (its own queries must reach the real resolvers, not come back to it).
        self._mark = mark
        # False (the agent): a query no rule matches (nor its CNAMEs) is neither attributed
        # nor delivered, as the agent records nothing about it: the lookup was a third of the
        # per-query cost. True: every query is attributed and delivered (for tools and tests).
        self._attribute_unmatched = attribute_unmatched
        # Drained every 20 ms: a wake-up per query would hand the GIL to the consumer each time.
        self._delivery: BackgroundWorker[DnsObservation] = BackgroundWorker(
            on_observation, name="dns-proxy-deliver", maxsize=queue_size, poll_interval=0.02
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._udp_sock: socket.socket | None = None
        self._bound: tuple[str, int] | None = None
        self._tcp_sock: socket.socket | None = None
        self._upstream_socks: list[socket.socket] = []
        self._buffer = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        # One count dict per thread (the UDP thread, the asyncio thread serving TCP), so an
        # increment is never lost to a thread switch; stats() adds them up.
        self._count_dicts: list[dict[str, int]] = []
        self._thread_counts = _ThreadCounts(
            self._count_dicts,
            (
                "queries",
                "tcp_queries",
                "forwarded",
                "blocked",
                "would_block",
                "cname_blocked",
                "canary",
                "malformed",
                "upstream_timeouts",
                "servfail",
                "tcp_fallbacks",
                "attributed",
                "unattributed",
                "forwarded_by_stub",
                "decide_errors",
                "late_answers",
                "upstream_refused",
                "send_errors",
            ),
        )
        self._udp_thread: threading.Thread | None = None
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when 0 was asked for)."""
        if self._bound is not None:
            return self._bound
        return self._listen

    @property
    def _counts(self) -> dict[str, int]:
        """This thread's counts."""
        return self._thread_counts.counts

    def start(self) -> None:
        self._bind()
        # Upstream sockets before any thread: a query may arrive as soon as the loop runs.
        for upstream in self._upstreams:
            sock = self._upstream_socket(upstream, socket.SOCK_DGRAM)
            try:
                sock.connect(upstream)
            except OSError as err:
                sock.close()
                self._close_sockets()
                raise ConfigError(
                    f"[dns] upstreams {upstream[0]}:{upstream[1]}: {err.strerror}; give a "
                    "reachable resolver address"
                ) from err
            self._upstream_socks.append(sock)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self._delivery.start()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="dns-proxy-tcp", daemon=True
        )
        self._thread.start()
        if not ready.wait(5.0):
            raise RuntimeError("DNS proxy loop did not start")
        self._udp_thread = threading.Thread(target=self._run_udp, name="dns-proxy", daemon=True)
        self._udp_thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        if self._udp_thread is not None:
            if self._wake_w is not None:
                try:
                    self._wake_w.send(b"\0")
                except OSError:
                    pass
            self._udp_thread.join(timeout)
            self._udp_thread = None
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
        self._thread = None
        self._delivery.stop(timeout)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._udp_sock, self._tcp_sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        for sock in self._upstream_socks:
            sock.close()
        self._upstream_socks = []  # start() again opens new ones (and binds anew)

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for per_thread in list(self._count_dicts):
            for key, value in list(per_thread.items()):
                counts[key] = counts.get(key, 0) + value
        counts["dropped_kernel"] = _udp_socket_drops(self._udp_sock)
        counts["pending"] = len(self._pending)
        counts["dropped_queue"] = sum(self._delivery.drops.snapshot().values())
        counts["callback_errors"] = self._delivery.counts["errors"]
        return counts

    def _bind(self) -> None:
        host, port = self._listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # With port 0 the kernel picks a free UDP port, which TCP may not have free (another
        # socket's ephemeral port): then try again with another one.
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((host, port))
                bound = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((host, bound))
                tcp.listen(128)
            except OSError as err:
                udp.close()
                tcp.close()
                if attempt + 1 < attempts and err.errno == errno.EADDRINUSE:
                    continue
                raise ConfigError(
                    f"[dns] proxy_listen {host}:{port}: {err.strerror}; choose a free address "
                    "or stop the resolver already listening there (port 53 needs root)"
                ) from err
            break
        udp.setblocking(False)
        tcp.setblocking(False)
        self._udp_sock, self._tcp_sock = udp, tcp
        self._bound = (host, bound)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(asyncio.start_server(self._serve_tcp, sock=self._tcp_sock))
            ready.set()
            loop.run_forever()
        except Exception:
            log.exception("DNS proxy TCP loop failed")
        finally:
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _run_udp(self) -> None:
        """The UDP loop: one poller over the client socket, the upstream sockets and the wake-up
        socket; each ready socket is drained; the timeout sweep runs every ``_SWEEP_SECONDS``.
        Its own thread and no asyncio: asyncio's loop iteration (selector keys, handles,
        contexts) cost more than the query's own handling."""
        assert self._udp_sock is not None and self._wake_r is not None
        handlers: dict[int, Callable[[], None]] = {
            self._udp_sock.fileno(): functools.partial(self._drain_client, self._udp_sock),
            self._wake_r.fileno(): self._drain_wake,
        }
        for index, sock in enumerate(self._upstream_socks):
            handlers[sock.fileno()] = functools.partial(self._drain_upstream, index, sock)
        poll = _poller(handlers)
        next_sweep = time.monotonic() + _SWEEP_SECONDS
        try:
            while not self._stopping:
                for handler in poll(max(0.0, next_sweep - time.monotonic())):
                    handler()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_SECONDS
                    try:
                        self._sweep()
                    except Exception:
                        log.exception("DNS proxy: the timeout sweep failed")
        except Exception:
            log.exception("DNS proxy UDP loop failed")

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _upstream_socket(self, upstream: tuple[str, int], kind: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            if self._mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, self._mark)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def local_ports(self) -> set[int]:
        """The local ports of the upstream UDP sockets (the capture skips their traffic)."""
        ports = set()
        for sock in list(self._upstream_socks):
            try:
                ports.add(int(sock.getsockname()[1]))
            except OSError:
                continue
        return ports

    # -- decisions and attribution ----------------------------------------------------------

    def _verdict(self, name: str, attribution: Attribution | None) -> NameVerdict | None:
        try:
            return self._decide(name, attribution.process if attribution else None)
        except Exception:
            log.exception("DNS decide callback failed for %s; allowing", name)
            self._counts["decide_errors"] += 1
            return None

    def _attribute(
        self, transport: str, client: tuple[str, int], server: tuple[str, int] | None = None
    ) -> Attribution:
        if self._attributor is None:
            return Attribution(None, "attribution disabled")
        found = self._attributor.attribute(transport, client, server or self.address)
        if found.forwarded:
            self._counts["forwarded_by_stub"] += 1
        elif found.process is None:
            self._counts["unattributed"] += 1
        else:
            self._counts["attributed"] += 1
        return found

    def _action(self, verdict: NameVerdict) -> str:
        if verdict.block:
            return "sinkholed" if self._mode == "enforce" else "would_block"
        return "exempted" if verdict.exempted_by else "reported"

    def _emit(
        self,
        observation: DnsObservation,
        attribution: Attribution | None,
        verdict: NameVerdict | None,
        matched: str | None,
    ) -> None:
        if attribution is not None:
            observation.set_attribution(
                attribution.process, attribution.reason, forwarded=attribution.forwarded
            )
        if verdict is not None and matched is not None:
            observation.set_verdict(verdict, matched, self._action(verdict))
        self._delivery.submit(observation)

    def _observe(
        self, facts: DnsMessageFacts, client: tuple[str, int], transport: str, when: float
    ) -> DnsObservation:
        return DnsObservation.from_facts(
            facts, src=client, dst=self.address, transport=transport, time=when
        )

    def _first_query_step(
        self,
        data: bytes,
        client: tuple[str, int],
        transport: str,
        server: tuple[str, int] | None = None,
    ) -> tuple[bytes | None, DnsMessageFacts | None, DnsObservation | None, Attribution | None]:
        """Common start for UDP and TCP: ``(reply now, facts, observation, attribution)``.

        A reply means the query is answered here (error, canary, block); otherwise, when
        ``facts`` is set, the caller forwards it. ``observation`` is ``None`` when no rule
        matched a question (and every query is not to be recorded): it is built later only if
        the answer makes it worth recording.
        """
        self._counts["queries"] += 1
        try:
            facts = parse_message(data)
        except MalformedDnsMessage:
            self._counts["malformed"] += 1
            return _header_only_error(data, dns.rcode.FORMERR), None, None, None
        if facts.is_response:
            self._counts["malformed"] += 1
            return None, None, None, None
        if facts.qname == CANARY:
            self._counts["canary"] += 1
            return self._reply_blocked(data, None), None, None, None
        attribution: Attribution | None = None
        # Every question of the message, not only the first: a resolver may answer them all.
        verdict: NameVerdict | None = None
        matched = facts.qname
        for name in facts.questions:
            found = self._verdict(name, None)
            if found is None:
                continue
            if attribution is None:
                attribution = self._attribute(transport, client, server)
            found = self._verdict(name, attribution)
            if found is None:
                continue
            if verdict is None or (found.block and not verdict.block):
                verdict, matched = found, name
            if found.block:
                break
        if verdict is None and not self._attribute_unmatched:
            return None, facts, None, None  # the fast path: nothing to record so far
        observation = self._observe(facts, client, transport, self._clock())
        if verdict is not None and verdict.block:
            self._counts["would_block" if self._mode == "monitor" else "blocked"] += 1
            if self._mode == "enforce":
                self._emit(observation, attribution, verdict, matched)
                return self._reply_blocked(data, verdict.rule_id), None, None, None
        if verdict is not None:
            observation.set_verdict(verdict, matched, self._action(verdict))
        return None, facts, observation, attribution

    def _reply_blocked(self, query: bytes, rule_id: str | None) -> bytes | None:
        try:
            return blocked_response(query, rule_id, self._blocked_ttl)
        except Exception:  # dnspython refused what our parser accepted: answer from the header
            self._counts["malformed"] += 1
            return _header_only_error(query, dns.rcode.NXDOMAIN)

    def _check_answer(
        self,
        query: bytes,
        answer: bytes,
        observation: DnsObservation | None,
        attribution: Attribution | None,
        transport: str,
        make_observation: Callable[[], DnsObservation],
    ) -> bytes:
        """Decide the answer's CNAME targets; emit the observation; return what to send.

        ``observation`` is ``None`` when nothing matched the question; ``make_observation``
        builds it if the answer turns out to need one."""
        if _CNAME_IN not in answer:
            if observation is None and not self._attribute_unmatched:
                return answer  # the common allowed answer: nothing matched, no CNAME
            # No CNAME record can be in there: skip the parse, keep the question's names.
            cname_targets: tuple[str, ...] = ()
            if observation is None:
                observation = make_observation()
            if attribution is None and self._attribute_unmatched:
                attribution = self._attribute(transport, observation.client)
            if len(answer) >= 4:
                observation.rcode = _RCODE_TEXT.get(answer[3] & 0x0F, str(answer[3] & 0x0F))
        else:
            if observation is None:
                observation = make_observation()
            if attribution is None and self._attribute_unmatched:
                attribution = self._attribute(transport, observation.client)
            try:
                facts = parse_message(answer)
            except MalformedDnsMessage:
                self._counts["servfail"] += 1
                self._emit(observation, attribution, observation.verdict, observation.matched_name)
                return _header_only_error(query, dns.rcode.SERVFAIL) or b""
            cname_targets = facts.cname_targets
            observation.set_answer(facts.names_to_check, cname_targets)
            observation.rcode = facts.rcode
        for target in cname_targets:
            verdict = self._verdict(target, None)
            if verdict is not None:
                if attribution is None:
                    attribution = self._attribute(transport, observation.client)
                verdict = self._verdict(target, attribution)
            if verdict is None:
                continue
            if verdict.block:
                self._counts["would_block" if self._mode == "monitor" else "cname_blocked"] += 1
                self._emit(observation, attribution, verdict, target)
                if self._mode == "enforce":
                    return self._reply_blocked(query, verdict.rule_id) or b""
                return answer
            if observation.verdict is None:
                observation.set_verdict(verdict, target)
        if observation.verdict is None and not self._attribute_unmatched:
            return answer  # nothing matched: nothing to record
        self._emit(observation, attribution, observation.verdict, observation.matched_name)
        return answer

    # -- UDP ----------------------------------------------------------------------------------

    def _drain_client(self, sock: socket.socket) -> None:
        """Read what the client socket holds (up to ``_BATCH`` datagrams) and handle each."""
        view = self._view
        for _ in range(_BATCH):
            try:
                size, addr = sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.debug("DNS proxy client socket error: %s", err)
                continue
            try:
                self.on_client_datagram(view[:size].tobytes(), addr)
            except Exception:  # one bad query must not stop the resolver
                log.exception("DNS proxy: unexpected error on a query from %s", addr)

    def _drain_upstream(self, index: int, sock: socket.socket) -> None:
        """Read the answers upstream ``index`` sent (up to ``_BATCH``) and relay each. An ICMP
        error the kernel queued on the connected socket is raised by the read: handled here."""
        view = self._view
        for _ in range(_BATCH):
            try:
                size = sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.debug("DNS proxy upstream %d error: %s", index, err)
                try:
                    self.on_upstream_error(index, err)
                except Exception:
                    log.exception("DNS proxy: unexpected error handling an upstream error")
                continue
            try:
                self.on_upstream_datagram(index, view[:size].tobytes())
            except Exception:
                log.exception("DNS proxy: unexpected error on an upstream answer")

    def _send_client(self, reply: bytes, client: tuple[str, int]) -> None:
        sock = self._udp_sock
        if sock is None:
            return
        try:
            sock.sendto(reply, client)
        except OSError as err:  # socket buffer full, client gone: UDP may lose it, counted
            self._counts["send_errors"] += 1
            log.debug("DNS proxy: reply to %s not sent: %s", client, err)

    def on_client_datagram(self, data: bytes, client: tuple[str, int]) -> None:
        client = (client[0], client[1])
        reply, facts, observation, attribution = self._first_query_step(data, client, "udp")
        if reply is not None:
            self._send_client(reply, client)
        if facts is None:
            return
        now = observation.time if observation is not None else self._clock()
        pending = _Pending(client, data, facts, observation, None, time.monotonic(), 0, now)
        self._counts["forwarded"] += 1
        self._send_upstream(pending)
        if attribution is None and self._attribute_unmatched:
            attribution = self._attribute("udp", client)  # while the upstream works
        pending.attribution = attribution

    def _send_upstream(self, pending: _Pending) -> None:
        index = pending.upstream_index
        while True:
            new_id = random.getrandbits(16)
            if (index, new_id) not in self._pending:
                break
        self._pending[(index, new_id)] = pending
        try:
            self._upstream_socks[index].send(_ID.pack(new_id) + pending.query[2:])
        except (BlockingIOError, InterruptedError):
            self._counts["send_errors"] += 1  # left pending: the sweep retries or SERVFAILs
        except OSError as err:  # an ICMP error queued by an earlier datagram (refused)
            self.on_upstream_error(index, err)

    def _pending_observation(self, pending: _Pending, transport: str) -> DnsObservation:
        if pending.observation is None:
            pending.observation = self._observe(
                pending.facts, pending.client, transport, pending.time
            )
        return pending.observation

    def on_upstream_datagram(self, index: int, data: bytes) -> None:
        if len(data) < 12:
            return
        pending = self._pending.pop((index, _ID.unpack_from(data)[0]), None)
        if pending is None:
            self._counts["late_answers"] += 1
            return
        answer = pending.query[:2] + data[2:]
        if data[2] & 0x02:  # TC: ask again over TCP (on the asyncio thread)
            self._counts["tcp_fallbacks"] += 1
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._start_tcp_fallback, pending, answer)
            return
        self._relay(pending, answer)

    def _relay(self, pending: _Pending, answer: bytes) -> None:
        reply = self._check_answer(
            pending.query,
            answer,
            pending.observation,
            pending.attribution,
            "udp",
            lambda: self._pending_observation(pending, "udp"),
        )
        if reply:
            self._send_client(reply, pending.client)

    def _start_tcp_fallback(self, pending: _Pending, truncated: bytes) -> None:
        task = asyncio.ensure_future(self._tcp_fallback(pending, truncated))
        self._tasks.add(task)  # keep a reference until done (asyncio holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def _tcp_fallback(self, pending: _Pending, truncated: bytes) -> None:
        upstream = self._upstreams[pending.upstream_index]
        try:
            full = await self._tcp_exchange(upstream, pending.query)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            full = truncated
        if len(full) > _client_udp_limit(pending.query):
            full = truncated  # too big for the client over UDP: it retries over TCP to us
        self._relay(pending, full)

    async def _tcp_exchange(self, upstream: tuple[str, int], query: bytes) -> bytes:
        async def exchange() -> bytes:
            sock = self._upstream_socket(upstream, socket.SOCK_STREAM)
            try:
                await asyncio.get_running_loop().sock_connect(sock, upstream)
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                await writer.drain()
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                return await reader.readexactly(size)
            finally:
                writer.close()

        return await asyncio.wait_for(exchange(), self._timeout)

    def on_upstream_error(self, index: int, exc: Exception) -> None:
        """The kernel reported an ICMP error for upstream ``index`` (port unreachable:
        nothing listens there): its pending queries go to the next upstream, or get SERVFAIL
        now rather than after the timeout."""
        if not isinstance(exc, ConnectionRefusedError):
            return
        self._counts["upstream_refused"] += 1
        failed = [key for key, p in self._pending.items() if key[0] == index]
        for key in failed:
            self._fail_over(self._pending.pop(key))

    def _fail_over(self, pending: _Pending) -> None:
        if pending.upstream_index + 1 < len(self._upstreams):
            pending.upstream_index += 1
            pending.started = time.monotonic()
            self._send_upstream(pending)
            return
        self._counts["servfail"] += 1
        self._emit(self._pending_observation(pending, "udp"), pending.attribution, None, None)
        reply = _header_only_error(pending.query, dns.rcode.SERVFAIL)
        if reply:
            self._send_client(reply, pending.client)

    def _sweep(self) -> None:
        """Retry timed-out queries on the next upstream; SERVFAIL when none is left."""
        deadline = time.monotonic() - self._timeout
        expired = [key for key, p in self._pending.items() if p.started < deadline]
        for key in expired:
            self._counts["upstream_timeouts"] += 1
            self._fail_over(self._pending.pop(key))

    # -- TCP ----------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = (peer[0], peer[1])
        server = _original_destination(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
                    data = await asyncio.wait_for(reader.readexactly(size), 10)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                self._counts["tcp_queries"] += 1
                reply = await self._answer_tcp(data, client, server)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except Exception:
            log.exception("DNS proxy TCP client %s failed", client)
        finally:
            writer.close()

    async def _answer_tcp(
        self, data: bytes, client: tuple[str, int], server: tuple[str, int] | None = None
    ) -> bytes | None:
        reply, facts, observation, attribution = self._first_query_step(data, client, "tcp", server)
        if facts is None:
            return reply
        when = observation.time if observation is not None else self._clock()
        if attribution is None and self._attribute_unmatched:
            attribution = self._attribute("tcp", client, server)
        self._counts["forwarded"] += 1

        def make_observation() -> DnsObservation:
            assert facts is not None
            return self._observe(facts, client, "tcp", when)

        for upstream in self._upstreams:
            try:
                answer = await self._tcp_exchange(upstream, data)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                self._counts["upstream_timeouts"] += 1
                continue
            return self._check_answer(
                data, answer, observation, attribution, "tcp", make_observation
            )
        self._counts["servfail"] += 1
        observation = observation or make_observation()
        self._emit(observation, attribution, observation.verdict, observation.matched_name)
        return _header_only_error(data, dns.rcode.SERVFAIL)


class _ThreadCounts(threading.local):
    """A count dict per thread, each registered in ``registry`` when first used."""

    def __init__(self, registry: list[dict[str, int]], keys: Sequence[str]) -> None:
        self.counts: dict[str, int] = dict.fromkeys(keys, 0)
        registry.append(self.counts)


def _poller(handlers: dict[int, Callable[[], None]]) -> Callable[[float], list[Callable[[], None]]]:
    """``poll(timeout) -> [handler of each ready fd]`` over ``handlers``' descriptors: epoll
    where there is one (Linux), else the platform's default selector."""
    if hasattr(select, "epoll"):
        epoll = select.epoll()
        for fd in handlers:
            epoll.register(fd, select.EPOLLIN)

        def poll_epoll(timeout: float) -> list[Callable[[], None]]:
            try:
                return [handlers[fd] for fd, _events in epoll.poll(timeout)]
            except InterruptedError:
                return []

        return poll_epoll
    selector = selectors.DefaultSelector()
    for fd, handler in handlers.items():
        selector.register(fd, selectors.EVENT_READ, handler)

    def poll_selector(timeout: float) -> list[Callable[[], None]]:
        return [key.data for key, _events in selector.select(timeout)]

    return poll_selector


def _udp_socket_drops(sock: socket.socket | None) -> int:
    """Datagrams the kernel dropped on ``sock`` (receive buffer full): the ``drops`` column of
    ``/proc/net/udp`` or ``udp6`` for the socket's inode; 0 when unknown."""
    if sock is None or sock.fileno() < 0:
        return 0
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
        table = "udp6" if sock.family == socket.AF_INET6 else "udp"
        with open(f"/proc/net/{table}", encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == inode:
                    return int(fields[12])
    except (OSError, ValueError):
        pass
    return 0


def _original_destination(sock: Any) -> tuple[str, int] | None:
    """Where a redirected TCP client meant to connect (``SO_ORIGINAL_DST``): its socket is
    connected there, which is what the attribution lookup must ask about. ``None`` when the
    connection was not redirected or the option is unavailable."""
    if sock is None or getattr(sock, "family", None) != socket.AF_INET:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack_from("!H", raw, 2)[0]
    address = socket.inet_ntoa(raw[4:8])
    local = sock.getsockname()
    if (address, port) == (local[0], local[1]):
        return None
    return address, port


def _client_udp_limit(query: bytes) -> int:
    try:
        request = dns.message.from_wire(query, ignore_trailing=True)
    except Exception:
        return 512
    return max(512, request.payload) if request.edns >= 0 else 512
