"""Passive DNS capture: every port-53 packet on every interface, parsed off the resolution path.

A reader thread receives from the filtered packet socket, parses headers and DNS, attributes
the query to its process (while the sender's socket is most likely still open) and hands the
observation to a :class:`~proscribe.agent.worker.BackgroundWorker` that drains every 50 ms (no
wake-up per packet) and calls ``on_observation``. Nothing waits on this sensor, so it adds no
latency to resolution.

Given ``relevant`` (the daemon passes "some rule matches one of these names"), a message whose
names no rule matches is checked, counted (``unmatched``) and dropped right after parsing: it is
neither attributed nor delivered. At a few hundred queries a second the interpreter runs cold
on every packet, so each step not taken is CPU saved (``bench/dns_capture.py``).

Malformed packets are counted and skipped; a full queue drops (counted) rather than block the
reader; an exception in the consumer callback is logged and counted, and the sensor keeps going.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from proscribe.agent.sensors.dns.attribution import Attribution, ProcessAttributor
from proscribe.agent.sensors.dns.headers import MalformedPacket, parse_packet
from proscribe.agent.sensors.dns.message import MalformedDnsMessage, parse_message
from proscribe.agent.sensors.dns.observation import DnsObservation, ObservationSink
from proscribe.agent.worker import BackgroundWorker
from proscribe.core.netaddr import is_loopback

log = logging.getLogger(__name__)

SocketFactory = Callable[[], socket.socket]
_OUTGOING = 4
_RECENT_QUERIES = 4096
_CNAME_IN = struct.pack("!HH", 5, 1)  # TYPE=CNAME CLASS=IN; absent -> no CNAME record
STUB_FORWARD_WINDOW = 2.0
REASON_STUB_FORWARD = (
    "forwarded by a local stub resolver (same question asked of a loopback resolver just "
    "before); the application's query carries the process"
)


def _default_socket() -> socket.socket:
    from proscribe.agent.sensors.dns._packet_linux import open_dns_socket

    return open_dns_socket()


class DnsCapture:
    """The capture sensor. ``attribute_if`` limits the procfs lookups to observations that need
    them (the daemon passes "some name matches a rule"); by default every one is attributed."""

    def __init__(
        self,
        on_observation: ObservationSink,
        *,
        attributor: ProcessAttributor | None = None,
        attribute_if: Callable[[DnsObservation], bool] | None = None,
        relevant: Callable[[tuple[str, ...]], bool] | None = None,
        queue_size: int = 10_000,
        socket_factory: SocketFactory = _default_socket,
        clock: Callable[[], float] = time.time,
        interfaces: Collection[str] = (),
        plain_responses: bool = True,
    ) -> None:
        # False: a response without a CNAME record is counted but not delivered; it repeats
        # its query's question and adds nothing a domain rule can match (the daemon's choice).
        self._plain_responses = plain_responses
        self._interfaces = frozenset(interfaces)  # empty: every interface
        self._attributor = attributor
        self._attribute_if = attribute_if
        self._relevant = relevant
        self._delivery: BackgroundWorker[DnsObservation] = BackgroundWorker(
            on_observation, name="dns-capture-deliver", maxsize=queue_size, poll_interval=0.05
        )
        self._socket_factory = socket_factory
        # (src, dst) -> True: not this sensor's to see (auto mode: what the resolver handles)
        self._skip: Callable[[tuple[str, int], tuple[str, int]], bool] | None = None
        self._clock = clock
        self._sock: socket.socket | None = None
        # (transport, client, msg id) -> the query's attribution, reused for its response,
        # whose client socket may already be closed by the time it is read.
        self._recent: dict[tuple[str, tuple[str, int], int], Attribution] = {}
        # (qname, qtype) -> (time, the loopback resolver it was asked of)
        self._stub_questions: dict[tuple[str, str], tuple[float, str]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            (
                "seen",
                "parsed",
                "queries",
                "responses",
                "unmatched",
                "malformed",
                "not_dns",
                "plain_responses_skipped",
                "other_interface",
                "tcp_partial",
                "outgoing_lo_skipped",
                "dropped_queue",
                "dropped_kernel",
                "attributed",
                "unattributed",
                "forwarded",
                "callback_errors",
                "skipped",
            ),
            0,
        )

    def set_skip(self, skip: Callable[[tuple[str, int], tuple[str, int]], bool]) -> None:
        """Packets for which ``skip(src, dst)`` is true are counted (``skipped``) and left."""
        self._skip = skip

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Open the packet socket (``OSError`` if not permitted) and start both threads."""
        self._sock = self._socket_factory()
        self._sock.settimeout(0.2)
        self._stopping.clear()
        self._delivery.start()
        self._thread = threading.Thread(target=self._read_loop, name="dns-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._delivery.stop(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def stats(self) -> dict[str, int]:
        """Counters since start; ``dropped_kernel`` is what the socket buffer lost."""
        if self._sock is not None and hasattr(socket, "AF_PACKET"):
            try:
                from proscribe.agent.sensors.dns._packet_linux import read_kernel_stats

                _packets, drops = read_kernel_stats(self._sock)
                with self._lock:  # stats() may be called from several threads
                    self._counts["dropped_kernel"] += drops
            except OSError:
                pass
        counts = dict(self._counts)
        counts["dropped_queue"] = sum(self._delivery.drops.snapshot().values())
        counts["callback_errors"] = self._delivery.counts["errors"]
        counts["queue_depth"] = self._delivery.depth()
        return counts

    def _count(self, key: str, n: int = 1) -> None:
        # Only the reader thread writes counters; no lock on the per-packet path.
        self._counts[key] += n

    # -- reader -----------------------------------------------------------------------------

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                data, address = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.warning("DNS capture socket failed; reopening", exc_info=True)
                time.sleep(0.5)
                continue
            try:
                self.handle_packet(data, address)
            except Exception:  # a bug here must not stop the sensor
                log.exception("DNS capture: unexpected error on one packet")
                self._count("malformed")

    def handle_packet(self, data: bytes, address: tuple[Any, ...]) -> None:
        """Process one packet as returned by ``recvfrom`` on the packet socket."""
        ifname, ethertype, pkttype = address[0], address[1], address[2]
        counts = self._counts  # written by this thread only: no lock per packet
        counts["seen"] += 1
        if self._interfaces and ifname not in self._interfaces:
            counts["other_interface"] += 1
            return
        if pkttype == _OUTGOING and ifname == "lo":
            counts["outgoing_lo_skipped"] += 1  # the BPF filter normally drops these already
            return
        try:
            segment = parse_packet(data, ethertype)
        except MalformedPacket:
            counts["malformed"] += 1
            return
        if segment is None:
            counts["not_dns"] += 1
            return
        if self._skip is not None and self._skip(segment.src, segment.dst):
            counts["skipped"] += 1
            return
        if segment.partial:
            counts["tcp_partial"] += 1
        now = self._clock()
        relevant = self._relevant
        for payload in segment.messages:
            if (
                not self._plain_responses
                and len(payload) > 2
                and payload[2] & 0x80  # QR: a response
                and _CNAME_IN not in payload
            ):
                counts["responses"] += 1
                counts["plain_responses_skipped"] += 1
                continue
            try:
                facts = parse_message(payload)
            except MalformedDnsMessage:
                counts["malformed"] += 1
                continue
            counts["parsed"] += 1
            counts["responses" if facts.is_response else "queries"] += 1
            if relevant is not None and not relevant(facts.names_to_check):
                counts["unmatched"] += 1
                continue
            observation = DnsObservation.from_facts(
                facts,
                src=segment.src,
                dst=segment.dst,
                transport=segment.transport,
                time=now,
                interface=ifname,
            )
            self._attribute(observation)
            self._delivery.submit(observation)

    def _attribute(self, observation: DnsObservation) -> None:
        """Fill in who sent it (in place: the observation is not handed out yet)."""
        stub_forward = self._is_stub_forward(observation)  # before this query is remembered
        if (
            observation.direction == "query"
            and is_loopback(observation.dst_ip)
            and not stub_forward  # a forward keeps the question filed under the first stub
        ):
            # An application's query to a local stub: remember it, so that the stub's forward
            # of the same question can be recognized even if the stub's socket is gone.
            if len(self._stub_questions) >= _RECENT_QUERIES:
                self._stub_questions.clear()
            self._stub_questions[(observation.qname, observation.qtype)] = (
                observation.time,
                observation.dst_ip,
            )
        if self._attributor is None:
            observation.set_attribution(None, "attribution disabled")
            return
        if self._attribute_if is not None and not self._attribute_if(observation):
            observation.set_attribution(None, "not looked up: no rule matched")
            return
        is_query = observation.direction == "query"
        key = (observation.transport, observation.client, observation.msg_id)
        found = None if is_query else self._recent.pop(key, None)
        if found is None:
            server = (
                (observation.dst_ip, observation.dst_port)
                if is_query
                else (observation.src_ip, observation.src_port)
            )
            found = self._attributor.attribute(observation.transport, observation.client, server)
            if found.process is None and not found.forwarded and stub_forward:
                found = Attribution(None, REASON_STUB_FORWARD, forwarded=True)
            if is_query:
                if len(self._recent) >= _RECENT_QUERIES:
                    self._recent.clear()
                self._recent[key] = found
        if found.forwarded:
            self._count("forwarded")
        elif found.process is None:
            self._count("unattributed")
        else:
            self._count("attributed")
        observation.set_attribution(found.process, found.reason, forwarded=found.forwarded)

    def _is_stub_forward(self, observation: DnsObservation) -> bool:
        """A query repeating a question an application just asked a loopback stub resolver
        (within ``STUB_FORWARD_WINDOW`` seconds), sent to another server than that stub: the
        stub's forward, to an upstream anywhere, a second loopback resolver included (resolved
        forwarding to a local dnsmasq, say). Consulted only when the sender was not found."""
        if observation.direction != "query":
            return False
        asked = self._stub_questions.get((observation.qname, observation.qtype))
        if asked is None:
            return False
        when, stub = asked
        if stub == observation.dst_ip:
            return False  # the same stub asked again: an application's retry, not a forward
        return 0 <= observation.time - when <= STUB_FORWARD_WINDOW
