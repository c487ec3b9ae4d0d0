"""``DnsObservation``: one DNS message seen by a sensor, with its process when known, and the
:class:`NameVerdict` the sensors ask for about each name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proscribe.agent.sensors.dns.message import DnsMessageFacts
from proscribe.agent.sensors.enrich import ProcessRef


@dataclass(frozen=True, slots=True)
class NameVerdict:
    """A decision about one DNS name for one process: block it, and/or report it.

    ``decide(name, process)`` returns ``None`` when no rule matches the name. Called with
    ``process=None`` it must not return ``None`` for a name some rule matches (exemptions only
    ever relax a verdict), which lets the proxy forward unmatched names before attributing.
    """

    block: bool
    rule_id: str | None = None
    report: bool = True
    exempted_by: str | None = None


Decide = Callable[[str, "ProcessRef | None"], NameVerdict | None]


@dataclass(slots=True)
class DnsObservation:
    """A query or response, who sent it, and the names to check against the domain rules.

    ``names_to_check`` is the question name followed by every CNAME target of the answer chain.
    ``process`` is ``None`` when the sender could not be found (``attribution_reason`` says why)
    or when the sender is a local stub resolver forwarding someone else's query
    (``forwarded`` is then true; the application's own query to the stub carries the process).
    """

    qname: str
    qtype: str
    direction: str  # "query" | "response"
    names_to_check: tuple[str, ...]
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    transport: str  # "udp" | "tcp"
    resolver: str  # the server's address: dst of a query, src of a response
    time: float  # time.time() when seen
    rcode: str = "NOERROR"
    msg_id: int = 0
    cname_targets: tuple[str, ...] = ()
    process: ProcessRef | None = None
    attribution_reason: str | None = None
    forwarded: bool = False
    interface: str | None = None
    # Set by the proxy, which decides inline: the verdict, the name it was about (the qname or
    # a CNAME target) and what was done: "sinkholed", "would_block" (monitor), "reported",
    # "exempted"; ``None`` when no rule matched or the sensor does not decide (capture).
    verdict: NameVerdict | None = None
    matched_name: str | None = None
    action: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_facts(
        cls,
        facts: DnsMessageFacts,
        *,
        src: tuple[str, int],
        dst: tuple[str, int],
        transport: str,
        time: float,
        interface: str | None = None,
    ) -> DnsObservation:
        direction = "response" if facts.is_response else "query"
        return cls(
            qname=facts.qname,
            qtype=facts.qtype,
            direction=direction,
            names_to_check=facts.names_to_check,
            src_ip=src[0],
            src_port=src[1],
            dst_ip=dst[0],
            dst_port=dst[1],
            transport=transport,
            resolver=src[0] if facts.is_response else dst[0],
            time=time,
            rcode=facts.rcode,
            msg_id=facts.msg_id,
            cname_targets=facts.cname_targets,
            interface=interface,
        )

    # Sensors fill an observation in stages on the hot path, where ``dataclasses.replace`` (a
    # full copy per stage) costs more than the rest of the work. These set fields in place and
    # return nothing; once handed to the consumer an observation is no longer changed.

    def set_attribution(
        self, process: ProcessRef | None, reason: str | None, *, forwarded: bool = False
    ) -> None:
        """Who sent it (or why that is not known)."""
        self.process = process
        self.attribution_reason = reason
        self.forwarded = forwarded

    def set_verdict(
        self, verdict: NameVerdict, matched_name: str, action: str | None = None
    ) -> None:
        """What the proxy decided about ``matched_name`` (the qname or a CNAME target)."""
        self.verdict = verdict
        self.matched_name = matched_name
        self.action = action

    def set_answer(self, names_to_check: tuple[str, ...], cname_targets: tuple[str, ...]) -> None:
        """The names the answer added (its CNAME chain)."""
        self.names_to_check = names_to_check
        self.cname_targets = cname_targets

    @property
    def client(self) -> tuple[str, int]:
        """The asking side's address: the source of a query, the destination of a response."""
        if self.direction == "query":
            return (self.src_ip, self.src_port)
        return (self.dst_ip, self.dst_port)

    def dns_section(self) -> dict[str, Any]:
        """The event schema's ``dns`` object."""
        return {"qname": self.qname, "qtype": self.qtype, "resolver": self.resolver}


ObservationSink = Callable[[DnsObservation], None]
