"""Glue between the DNS sensors and the policy/spool: decide on names, record ``dns`` events.

The sensors (``proscribe.agent.sensors.dns``) call :meth:`DnsGuard.decide` (the proxy, inline,
to sinkhole) and deliver every observation to :meth:`DnsGuard.on_observation` on their own
thread. Here a matched name becomes a ``dns`` event committed to the spool: with the action the
proxy took (``sinkholed``, ``would_block``, ``reported``, ``exempted``) or, for passive capture,
which never blocks, ``reported``/``exempted``. One event per (rule, process, name) within the
window; repeats fold into its count (``Spool.bump_count``) while it is unsent; once it was sent,
repeats are counted here and :meth:`DnsGuard.flush_repeats` (called by the daemon's loop) writes
one event per key when its window closes, carrying the count — never one event per query.
An unattributed query says why in ``detail``; a stub resolver's forwarded copy is labelled.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from proscribe.agent.policy_source import PolicySource
from proscribe.agent.process_guard import EventSink
from proscribe.core.events import ENCRYPTED_DNS_RULE, new_event, utc_now_iso
from proscribe.core.policy.matchers.compiled import Decision

__all__ = ["ENCRYPTED_DNS_RULE", "DnsGuard"]

log = logging.getLogger(__name__)


class DnsGuard:
    def __init__(
        self,
        *,
        policy: PolicySource,
        spool: EventSink,
        hostname: str,
        host_info: Callable[[], dict[str, Any]],
        on_violation: Callable[[], None] = lambda: None,
        window: float = 60.0,
    ) -> None:
        from proscribe.agent.sensors.dns import DnsDeduper

        self.policy = policy
        self.spool = spool
        self.hostname = hostname
        self.host_info = host_info
        self.on_violation = on_violation
        self.window = window
        self.deduper = DnsDeduper(window)
        self.counts: Counter[str] = Counter()
        # key -> [event template, repeats not in any spooled event, window start (monotonic)]
        self._repeats: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def _decision(self, name: str, process: dict[str, Any] | None) -> Decision | None:
        compiled = self.policy.compiled
        if compiled is None:
            return None
        user = (process or {}).get("user") or None
        return compiled.check_domain(name, self.hostname, user, self.policy.now())

    def _policy_ref(self) -> dict[str, Any] | None:
        """The policy in force, as an event's ``policy`` section."""
        compiled = self.policy.compiled
        if compiled is None:
            return None
        meta = compiled.policy.meta
        return {"id": meta.id, "serial": meta.serial, "sha256": compiled.policy.sha256}

    def _append(self, event: dict[str, Any]) -> bool:
        try:
            return bool(self.spool.append(event))
        except Exception:
            log.exception("spool append failed")
            return False

    def decide(self, name: str, process: dict[str, Any] | None) -> Any:
        """The sensors' ``Decide``: a ``Verdict`` for a name some rule matches, else None."""
        from proscribe.agent.sensors.dns import Verdict

        decision = self._decision(name, process)
        if decision is None:
            return None
        if decision.exempted_by is not None:
            return Verdict(False, decision.rule_id, True, decision.exempted_by)
        return Verdict(decision.action == "block", decision.rule_id, True, None)

    def on_observation(self, observation: Any) -> None:
        """Record a matched observation; anything else is ignored."""
        if observation.verdict is not None and observation.action is not None:
            name = observation.matched_name or observation.qname
            decision = self._decision(name, observation.process)
            action = str(observation.action)
        else:
            # passive capture: the question in queries, the CNAME chain in responses
            names = (
                (observation.qname,)
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
        process = observation.process
        who = (process or {}).get("pid") or (process or {}).get("exe") or observation.client[0]
        key = (decision.rule_id, action, who, name)
        first, token = self.deduper.offer(key)
        if not first:
            try:
                if isinstance(token, str) and self.spool.bump_count(token, 1):
                    self.counts["folded"] += 1
                    return
            except Exception:
                log.exception("spool bump_count failed")
            with self._lock:
                entry = self._repeats.get(key)
                if entry is not None:
                    entry[1] += 1  # written by flush_repeats when the window closes
                    self.counts["folded"] += 1
                    return
        event = new_event(
            "dns",
            rule=decision.rule_id,
            action=action,
            severity=decision.severity,
            policy=self._policy_ref(),
            host=self.host_info(),
            process=process,
            dns=observation.dns_section(),
            detail=decision.explanation
            + (f" (CNAME target {name})" if name != observation.qname else "")
            + _provenance(observation),
        )
        stored = self._append(event)
        if stored:
            self.deduper.remember(key, event["id"])
            with self._lock:
                self._repeats[key] = [event, 0, time.monotonic()]
            self.counts[action] += 1
            self.on_violation()
            log.info("dns %s: %s (%s)", action, name, decision.explanation)
        else:
            self.counts["unspooled"] += 1

    def on_encrypted(self, connection: Any) -> None:
        """Record a connection to an encrypted DNS resolver (DoT, or DoH to a known one): its
        queries reach neither DNS sensor, so it is reported as a way around the policy's
        domain rules (rule ``encrypted-dns``, action ``reported``; the watch dedupes)."""
        resolver = f"{connection.resolver[0]}:{connection.resolver[1]}"
        who = "" if connection.process else (
            f" (process not attributed: {connection.attribution_reason or 'unknown'})"
        )  # fmt: skip
        event = new_event(
            "dns",
            rule=ENCRYPTED_DNS_RULE,
            action="reported",
            severity="medium",
            policy=self._policy_ref(),
            host=self.host_info(),
            process=connection.process,
            dns={
                "qname": connection.provider or connection.resolver[0],
                "qtype": connection.protocol,
                "resolver": resolver,
            },
            detail=(
                f"{connection.description}: queries sent this way are invisible to the DNS "
                "sensor and the proxy, so domain rules cannot see them (turn DNS over HTTPS "
                f"off by browser policy){who}"
            ),
        )
        stored = self._append(event)
        if stored:
            self.counts["encrypted_dns"] += 1
            self.on_violation()
            log.warning("encrypted DNS: %s%s", connection.description, who)
        else:
            self.counts["unspooled"] += 1

    def flush_repeats(self, now: float | None = None) -> int:
        """Write one event per key whose window closed with repeats the spool has not counted."""
        moment = time.monotonic() if now is None else now
        due: list[tuple[dict[str, Any], int]] = []
        with self._lock:
            for key, entry in list(self._repeats.items()):
                template, repeats, started = entry
                if moment - started < self.window:
                    continue
                del self._repeats[key]
                if repeats:
                    due.append((template, repeats))
        for template, repeats in due:
            event = copy.deepcopy(template)
            event["id"] = str(uuid.uuid4())
            event["time"] = utc_now_iso()
            event["count"] = repeats
            event["detail"] = (
                f"{event.get('detail', '')} ({repeats} repeat(s) after the first report)"
            ).strip()
            try:
                if self.spool.append(event):
                    self.counts["repeat_events"] += 1
                    continue
            except Exception:
                log.exception("spool append failed")
            self.counts["unspooled"] += 1
        return len(due)


def _provenance(observation: Any) -> str:
    """Why a query has no process, or that it is a stub resolver's forwarded copy."""
    if getattr(observation, "forwarded", False):
        return " (forwarded by a local stub resolver; the application's own query is separate)"
    if observation.process is None:
        reason = getattr(observation, "attribution_reason", None) or "unknown"
        return f" (process not attributed: {reason})"
    return ""
