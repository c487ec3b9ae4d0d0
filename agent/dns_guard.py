"""Glue between the DNS sensors and the policy/spool: decide on names, record ``dns`` events.

The sensors (``proscribe.agent.sensors.dns``) call :meth:`DnsGuard.decide` (the proxy, inline,
to sinkhole) and deliver every observation to :meth:`DnsGuard.on_observation` on their own
thread. Here a matched name becomes a ``dns`` event committed to the spool: with the action the
proxy took (``sinkholed``, ``would_block``, ``reported``, ``exempted``) or, for passive capture,
which never blocks, ``reported``/``exempted``. Repeats follow the agent's one rule
(:mod:`proscribe.agent.repeats`): one event per (rule, action, process) and window whatever
the names, the window's later queries folded into its count (with a sample of the names) —
never one event per query or per name.
An unattributed query says why in ``detail``; a stub resolver's forwarded copy is labelled.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from proscribe.agent.counters import Counters
from proscribe.agent.evidence import Evidence
from proscribe.agent.policy_source import PolicyInForce
from proscribe.agent.repeats import RepeatFolder
from proscribe.core.events import ENCRYPTED_DNS_RULE, Event
from proscribe.core.policy.matchers.compiled import Decision

if TYPE_CHECKING:
    from proscribe.agent.sensors.dns import DnsObservation, NameVerdict, ProcessRef
    from proscribe.agent.sensors.dns.encrypted import EncryptedDnsConnection

__all__ = ["ENCRYPTED_DNS_RULE", "DnsGuard"]

log = logging.getLogger(__name__)

_SAMPLE_NAMES = 5  # names kept per series for the detail of its events
_SAMPLE_SERIES = 4096


class DnsGuard:
    def __init__(
        self,
        *,
        policy: PolicyInForce,
        evidence: Evidence,
        hostname: str,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.evidence = evidence
        self.hostname = hostname
        self.counts = Counters()  # the sensor's delivery thread, the watch and the daemon loop
        self.repeats = RepeatFolder(evidence, window, counts=self.counts, clock=clock)
        self._samples: OrderedDict[tuple[str, str, object], list[str]] = OrderedDict()

    def _decision(self, name: str, process: ProcessRef | None) -> Decision | None:
        compiled = self.policy.compiled
        if compiled is None:
            return None
        user = (process or {}).get("user") or None
        return compiled.check_domain(name, self.hostname, user, self.policy.now())

    def decide(self, name: str, process: ProcessRef | None) -> NameVerdict | None:
        """The sensors' ``Decide``: a verdict for a name some rule matches, else None."""
        from proscribe.agent.sensors.dns import NameVerdict

        decision = self._decision(name, process)
        if decision is None:
            return None
        if decision.exempted_by is not None:
            return NameVerdict(False, decision.rule_id, True, decision.exempted_by)
        return NameVerdict(decision.action == "block", decision.rule_id, True, None)

    def on_observation(self, observation: DnsObservation) -> None:
        """Record a matched observation; anything else is ignored."""
        if observation.verdict is not None and observation.action is not None:
            name = observation.matched_name or observation.qname
            decision = self._decision(name, observation.process)
            action = str(observation.action)
        else:
            # passive capture: every question in queries, the CNAME chain in responses
            names = (
                observation.names_to_check
                if observation.direction == "query"
                else tuple(observation.cname_targets)
            )
            decision, name = None, ""
            for candidate in names:
                decision = self._decision(candidate, observation.process)
                if decision is not None:
                    name = candidate
                    break
            if decision is None:
                return
            action = "exempted" if decision.exempted_by else "reported"
        if decision is None:
            return
        found = decision
        compiled = self.policy.compiled
        process = observation.process

        def build() -> Event:
            return self.evidence.event(
                "dns",
                rule=found.rule_id,
                action=action,
                severity=found.severity,
                judged_by=compiled,
                process=process,
                dns=observation.dns_section(),
                detail=found.explanation
                + (f" (CNAME target {name})" if name != observation.qname else "")
                + _provenance(observation),
            )

        who = (process or {}).get("pid") or (process or {}).get("exe") or observation.client[0]
        # One series per (rule, action, process), however many names: 1,000 random
        # subdomains asked by one program are one event counting 1,000, not 1,000 events. A
        # sample of the names goes in the detail of the events that carry repeats.
        series = (found.rule_id, action, who)
        sample = self._samples.get(series)
        if sample is None:
            sample = self._samples[series] = []
            while len(self._samples) > _SAMPLE_SERIES:
                self._samples.popitem(last=False)
        if name not in sample and len(sample) < _SAMPLE_NAMES:
            sample.append(name)

        def build_sampled() -> Event:
            event = build()
            if len(sample) > 1:
                event["detail"] = f"{event['detail']} (names in this window: {', '.join(sample)})"
            return event

        recorded = self.repeats.record(series, build_sampled)
        if recorded.kind != "first":
            return
        if recorded.stored:
            self.counts.add(action)
            log.info("dns %s: %s (%s)", action, name, found.explanation)
        else:
            self.counts.add("unspooled")

    def on_encrypted(self, connection: EncryptedDnsConnection) -> None:
        """Record a connection to an encrypted DNS resolver (DoT, or DoH to a known one): its
        queries reach neither DNS sensor, so it is reported as a way around the policy's
        domain rules (rule ``encrypted-dns``, action ``reported``; the watch reports each
        process and resolver once per its window)."""
        resolver = f"{connection.resolver[0]}:{connection.resolver[1]}"
        who = "" if connection.process else (
            f" (process not attributed: {connection.attribution_reason or 'unknown'})"
        )  # fmt: skip
        if connection.blocked:
            action = "denied"
            why = (
                "rejected by the agent's firewall rule ([dns] block_encrypted), so the client "
                "falls back to plain DNS, which the policy answers"
            )
        else:
            action = "reported"
            why = (
                "queries sent this way are invisible to the DNS sensor and the proxy, so "
                "domain rules cannot see them (turn DNS over HTTPS off by browser policy)"
            )
        compiled = self.policy.compiled

        def build() -> Event:
            return self.evidence.event(
                "dns",
                rule=ENCRYPTED_DNS_RULE,
                action=action,
                severity="medium",
                judged_by=compiled,
                process=connection.process,
                dns={
                    "qname": connection.provider or connection.resolver[0],
                    "qtype": connection.protocol,
                    "resolver": resolver,
                },
                detail=f"{connection.description}: {why}{who}",
            )

        if connection.blocked:
            # a browser retries: one event per process and resolver per window, counted
            pid = (connection.process or {}).get("pid")
            recorded = self.repeats.record((ENCRYPTED_DNS_RULE, action, pid, resolver), build)
            if recorded.kind != "first":
                return
            stored = recorded.stored
        else:
            stored = self.evidence.commit(build())
        if stored:
            self.counts.add("encrypted_dns")
            log.warning("encrypted DNS %s: %s%s", action, connection.description, who)
        else:
            self.counts.add("unspooled")

    def flush_repeats(self, *, force: bool = True) -> int:
        """Fold counted repeats into their events (the daemon's loop and shutdown call it)."""
        return self.repeats.flush(force=force)


def _provenance(observation: DnsObservation) -> str:
    """Why a query has no process, or that it is a stub resolver's forwarded copy."""
    if observation.forwarded:
        return " (forwarded by a local stub resolver; the application's own query is separate)"
    if observation.process is None:
        reason = observation.attribution_reason or "unknown"
        return f" (process not attributed: {reason})"
    return ""
