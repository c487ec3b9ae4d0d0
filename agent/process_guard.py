"""Judge one process against the policy in force, record the evidence, then act.

Order matters and is fixed: decide → de-duplicate → **commit the event to the spool** → act
(kill) → tell the user. The event is the evidence, so it is durable before anything happens to
the process.

Recording the outcome: the event committed before acting already carries the intended action
(``killed`` in enforce mode for a ``block`` rule; ``would_block`` in monitor mode; ``reported``
for a ``report`` rule; ``exempted`` when an exemption applies). The kill is then attempted; when
it does not happen — the target is protected (pid 1, the agent, its parent, a kernel thread) or
the signal fails — a follow-up event with action ``failed``, the same rule and process, and a
detail naming the original event id is committed. A process that exited (or whose pid was
reused) before the signal is logged, not reported as a failure: it is no longer running.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from proscribe.agent.dedupe import Deduper
from proscribe.agent.enforce.kill import Killer, KillOutcome
from proscribe.agent.enforce.notify import Notifier, session_env
from proscribe.agent.policy_source import PolicySource
from proscribe.agent.sensors.process import Sighting
from proscribe.core.events import MAX_CMDLINE_ITEMS, Event, clip, new_event
from proscribe.core.policy.matchers.compiled import CompiledPolicy, Decision
from proscribe.core.policy.matchers.process import ProcessFacts

__all__ = ["EventSink", "ProcessGuard", "process_section"]

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """What the guard needs from the spool (``Spool`` satisfies it)."""

    def append(self, event: Event) -> bool: ...

    def bump_count(self, event_id: str, n: int = 1) -> bool: ...


def process_section(facts: ProcessFacts) -> dict[str, Any]:
    """The event schema's ``process`` object, clipped to the wire limits."""
    return {
        "pid": facts.pid,
        "ppid": facts.ppid,
        "name": clip(facts.name),
        "exe": clip(facts.exe),
        "cmdline": [clip(a) for a in facts.cmdline[:MAX_CMDLINE_ITEMS]],
        "user": clip(facts.user),
        "sha256": facts.sha256,
    }


class ProcessGuard:
    def __init__(
        self,
        *,
        policy: PolicySource,
        spool: EventSink,
        killer: Killer,
        notifier: Notifier,
        deduper: Deduper,
        mode: str,
        hostname: str,
        host_info: Callable[[], dict[str, Any]],
        kill_children: bool = False,
        on_violation: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.spool = spool
        self.killer = killer
        self.notifier = notifier
        self.deduper = deduper
        self.mode = mode
        self.hostname = hostname
        self.host_info = host_info
        self.kill_children = kill_children
        self.on_violation = on_violation
        self.counts: Counter[str] = Counter()
        self.clock = clock
        self.flush_interval = 0.5
        self._last_flush = clock()
        # event id -> (repeats not yet written, an event to re-send them in, rule key, series)
        self._repeats: dict[str, tuple[int, Event, str, str]] = {}
        self._lock = threading.Lock()

    def policy_section(self, compiled: CompiledPolicy) -> dict[str, Any]:
        meta = compiled.policy.meta
        return {"id": meta.id, "serial": meta.serial, "sha256": compiled.policy.sha256}

    def event_action(self, decision: Decision) -> str:
        if decision.exempted_by is not None:
            return "exempted"
        if decision.action != "block":
            return "reported"
        return "killed" if self.mode == "enforce" else "would_block"

    def matches(self, facts: ProcessFacts) -> bool:
        """Whether some rule matches ``facts`` (the sensor's cheap prefilter)."""
        compiled = self.policy.compiled
        return compiled is not None and bool(
            compiled.check_process(facts, self.hostname, self.policy.now())
        )

    def handle(self, facts: ProcessFacts, sighting: Sighting) -> None:
        """The process sensor's handler (runs on the sensor's checker thread)."""
        compiled = self.policy.compiled
        if compiled is None:
            return
        now = self.policy.now()
        decisions = compiled.check_process(facts, self.hostname, now)
        if not decisions:
            return
        if facts.uid is None and not facts.user:
            # read without the user (the fast path): exemptions by user need it
            facts = self.killer.enricher.with_user(facts)
            decisions = compiled.check_process(facts, self.hostname, now)
        to_kill: tuple[Decision, Event] | None = None
        for decision in decisions:
            action = self.event_action(decision)
            event = self._record(compiled, facts, decision, action, sighting)
            if event is not None and action == "killed" and to_kill is None:
                to_kill = (decision, event)
        if to_kill is not None:
            self._enforce(compiled, facts, *to_kill)

    def _record(
        self,
        compiled: CompiledPolicy,
        facts: ProcessFacts,
        decision: Decision,
        action: str,
        sighting: Sighting,
    ) -> Event | None:
        """Spool the event (or fold it into a count); None when it is a duplicate."""
        rule_key = f"{decision.rule_id}/{action}"
        # the series a repeat folds into: the executable, or the name when it could not be read
        # (a zombie or a process exiting while it was read)
        series = facts.exe or f"comm:{facts.name}"
        verdict = self.deduper.judge(rule_key, facts.pid, facts.start_time, series)
        if verdict.kind == "duplicate":
            return None
        event = new_event(
            "process",
            rule=decision.rule_id,
            action=action,
            severity=decision.severity,
            policy=self.policy_section(compiled),
            host=self.host_info(),
            process=process_section(facts),
            detail=f"{decision.explanation} (seen by {sighting.source})",
        )
        if verdict.kind == "repeat" and verdict.event_id is not None:
            # Counted in memory and folded into the spooled event by flush_repeats(): one
            # write per series and half-second instead of one fsync per start, so a storm of
            # repeats cannot starve the checker. The series' first event was committed before
            # its first action; a repeat is acted on without waiting for its count's commit.
            with self._lock:
                n, _, _, _ = self._repeats.get(verdict.event_id, (0, event, rule_key, series))
                self._repeats[verdict.event_id] = (n + 1, event, rule_key, series)
            self.counts["folded"] += 1
            self.flush_repeats(force=False)
            return event
        stored = self._append(event)
        if stored:
            self.deduper.recorded(rule_key, series, event["id"], verdict.count)
            self.counts[action] += 1
            self.on_violation()
        else:
            self.counts["unspooled"] += 1
            log.error(
                "event for pid %s (rule %s) could not be spooled", facts.pid, decision.rule_id
            )
        log.info(
            "%s: pid %s %s (%s)", action, facts.pid, facts.name or facts.exe, decision.explanation
        )
        return event

    def flush_repeats(self, *, force: bool = True) -> None:
        """Fold counted repeats into their spooled events (a new event if one was sent)."""
        now = self.clock()
        with self._lock:
            if not self._repeats or (not force and now - self._last_flush < self.flush_interval):
                return
            pending, self._repeats = self._repeats, {}
            self._last_flush = now
        for event_id, (n, template, rule_key, series) in pending.items():
            if self._bump(event_id, n):
                continue
            # the first event was already delivered: these repeats travel in a new one
            event = dict(template, id=str(uuid.uuid4()), count=n)
            if self._append(event):
                self.deduper.recorded(rule_key, series, event["id"], n)
            else:
                self.counts["unspooled"] += 1

    def _append(self, event: Event) -> bool:
        try:
            return bool(self.spool.append(event))
        except Exception:
            log.exception("spool append failed")
            return False

    def _bump(self, event_id: str, n: int = 1) -> bool:
        try:
            return bool(self.spool.bump_count(event_id, n))
        except Exception:
            log.exception("spool bump_count failed")
            return False

    def _enforce(
        self, compiled: CompiledPolicy, facts: ProcessFacts, decision: Decision, event: Event
    ) -> None:
        rule = compiled.policy.rule(decision.rule_id)
        children = self.kill_children or bool(getattr(rule, "kill_children", False))
        env = session_env(facts.pid, self.killer.procfs) if self.notifier.enabled else {}
        outcome = self.killer.kill(facts.pid, facts.start_time, children=children)
        if outcome.killed:
            self.counts["kill_ok"] += 1
            self.notifier.tell(
                "Program stopped by Proscribe",
                f"{facts.name or facts.exe} (pid {facts.pid}) was stopped: {decision.message}",
                env=env,
                uid=facts.uid,
            )
            return
        if outcome.gone:
            self.counts["kill_target_gone"] += 1
            log.info("pid %s exited before it could be killed (%s)", facts.pid, outcome.reason)
            return
        self.counts["kill_failed"] += 1
        self._record_failure(compiled, facts, decision, event, outcome)

    def _record_failure(
        self,
        compiled: CompiledPolicy,
        facts: ProcessFacts,
        decision: Decision,
        event: Event,
        outcome: KillOutcome,
    ) -> None:
        log.error(
            "could not kill pid %s (rule %s): %s", facts.pid, decision.rule_id, outcome.reason
        )
        follow_up = new_event(
            "process",
            rule=decision.rule_id,
            action="failed",
            severity=decision.severity,
            policy=self.policy_section(compiled),
            host=self.host_info(),
            process=process_section(facts),
            detail=f"kill not done: {outcome.reason}; outcome of event {event['id']}",
        )
        self._append(follow_up)
