"""Judge one process against the policy in force, record the evidence, then act.

Order matters and is fixed: decide → de-duplicate → **commit the event to the spool** → act
(kill) → tell the user. The event is the evidence, so it is durable before anything happens to
the process. De-duplication and folding of repeats follow the agent's one rule
(:mod:`proscribe.agent.repeats`): one event per (rule, action, process); starts of the same
executable by the same user within the window fold into the first one's count (another user's
start is its own event: nobody disappears into someone else's count).

The pre-exec guard's refusals are process events too: :meth:`ProcessGuard.record_exec_denial`
records them (folded per rule and executable) on the exec guard's reporting thread.

Recording the outcome: the event committed before acting already carries the action
(``killed`` in enforce mode for a ``block`` rule — only once the process, pinned by a pidfd when
the sensor first saw it, has been stopped with SIGSTOP, so it cannot exit on its own between the
event and the SIGKILL; ``exited`` when it had already exited,
which reports do not count as a block; ``would_block`` in monitor mode; ``reported`` for a
``report`` rule; ``exempted`` when an exemption applies). The kill is then attempted; when
it does not happen — the target is protected (pid 1, the agent, its parent, a kernel thread) or
the signal fails — a follow-up event with action ``failed``, the same rule and process, and a
detail naming the original event id is committed. A process that exited (or whose pid was
reused) before the signal is logged, not reported as a failure: it is no longer running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from proscribe.agent.counters import Counters
from proscribe.agent.enforce.kill import Killer, KillOutcome
from proscribe.agent.enforce.notify import Notifier, session_env
from proscribe.agent.evidence import Evidence
from proscribe.agent.policy_source import PolicyInForce
from proscribe.agent.repeats import RepeatFolder
from proscribe.agent.sensors.enrich import process_ref
from proscribe.agent.sensors.process import Sighting
from proscribe.agent.sightings import SightingBook
from proscribe.core.events import Event
from proscribe.core.policy.matchers.compiled import CompiledPolicy, Decision
from proscribe.core.policy.matchers.process import COMM_MAX, ProcessFacts, basename

if TYPE_CHECKING:
    from proscribe.agent.enforce.bpf.guard import KernelReport
    from proscribe.agent.enforce.exec_verdicts import ExecRequest, ExecVerdict

__all__ = ["ProcessGuard"]

log = logging.getLogger(__name__)


class KernelCoverage(Protocol):
    """What the process guard asks of the kernel exec guard (``agent/kernel_guard.py``)."""

    def covers(self, facts: ProcessFacts) -> bool: ...

    def learn(self, facts: ProcessFacts, rule_id: str) -> bool: ...


class ProcessGuard:
    def __init__(
        self,
        *,
        policy: PolicyInForce,
        evidence: Evidence,
        killer: Killer,
        notifier: Notifier,
        window: float,
        mode: str,
        hostname: str,
        kill_children: bool = False,
        kernel: KernelCoverage | None = None,
        users: Callable[[int], str] | None = None,
        sightings: SightingBook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.evidence = evidence
        self.killer = killer
        self.notifier = notifier
        self.mode = mode
        self.hostname = hostname
        self.kill_children = kill_children
        self.kernel = kernel
        self.users = users
        self.sightings = sightings
        self.counts = Counters()  # the checker, the exec guard's reporter and the daemon loop
        self.repeats = RepeatFolder(evidence, window, counts=self.counts, clock=clock)

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
        if sighting.source != "comm" and self._kernel_handles(facts, decisions):
            self.counts.add("kernel_handled")
            return
        to_kill: tuple[Decision, Event] | None = None
        running: bool | None = None
        for decision in decisions:
            action = self.event_action(decision)
            if action == "killed":
                if running is None:  # stopped before the event, so that it is true
                    running = self.killer.hold(facts.pid, facts.start_time, sighting.pidfd)
                if not running:
                    action = "exited"
            event = self._record(compiled, facts, decision, action, sighting)
            if event is not None and action == "killed" and to_kill is None:
                to_kill = (decision, event)
        if to_kill is not None:
            self._enforce(compiled, facts, *to_kill, pidfd=sighting.pidfd)

    def _kernel_handles(self, facts: ProcessFacts, decisions: list[Decision]) -> bool:
        """The kernel exec guard killed this exec and reports it itself (one exec, one event);
        a file denied by hash is taught to the kernel for its next exec. Never for a comm
        change: the kernel judges names at exec only."""
        if self.kernel is None or self.mode != "enforce":
            return False
        blocks = [d for d in decisions if d.action == "block" and d.exempted_by is None]
        covered = len(blocks) == len(decisions) and self.kernel.covers(facts)
        for decision in blocks:
            if decision.field == "sha256":  # after judging this exec: it ran, the next will not
                self.kernel.learn(facts, decision.rule_id)
        return covered

    def record_kernel_report(self, report: KernelReport) -> None:
        """The kernel exec guard's report (on its reader thread): a ``process`` event with what
        the kernel knew at the exec (or at the executable mapping, for ``ld.so FILE``), folded
        per (rule, executable, user). ``killed`` is true: the signal was sent from the killed
        process's own context, which was alive by definition."""
        compiled = self.policy.compiled
        rule = compiled.policy.rule(report.rule_id) if compiled is not None else None
        severity = str(getattr(rule, "severity", "high"))
        action = "killed" if report.killed else "would_block"
        user = self.users(report.uid) if self.users is not None else ""
        exe = report.filename or report.name
        facts = ProcessFacts(
            pid=report.pid,
            ppid=report.ppid,
            name=report.comm,
            exe=exe,
            user=user,
            uid=report.uid,
        )
        what = {
            "comm": f"comm {report.comm!r}",
            "exe_name": f"executable file name {report.name!r}",
            "inode": f"file {report.name!r} (device {report.dev}, inode {report.ino})",
            "loaded_name": f"file {report.name!r} run through the dynamic loader",
        }.get(report.why, report.why)
        when = "at exec" if report.kind == "exec" else "when mapped executable (dynamic loader)"
        detail = (
            f"rule {report.rule_id}: {what} is denied; killed in the kernel {when} "
            f"by the eBPF exec guard (seen by kernel)"
        )

        def build() -> Event:
            return self.evidence.event(
                "process",
                rule=report.rule_id or None,
                action=action,
                severity=severity,
                judged_by=compiled,
                process=process_ref(facts),
                detail=detail,
            )

        rule_key = f"{report.rule_id}/{action}"
        recorded = self.repeats.record(
            (rule_key, report.name, report.dev, report.ino, report.uid),
            build,
            occurrence=(rule_key, report.pid, report.boot_ns),
        )
        if recorded.kind == "first":
            self.counts.add(action if recorded.stored else "unspooled")
        if report.killed:
            self.counts.add("kill_ok")

    def _record(
        self,
        compiled: CompiledPolicy,
        facts: ProcessFacts,
        decision: Decision,
        action: str,
        sighting: Sighting,
    ) -> Event | None:
        """Commit the event (or fold it into its series' count); None for a duplicate."""
        rule_key = f"{decision.rule_id}/{action}"

        outcome = "; it had exited before it could be killed" if action == "exited" else ""

        def build() -> Event:
            return self.evidence.event(
                "process",
                rule=decision.rule_id,
                action=action,
                severity=decision.severity,
                judged_by=compiled,
                process=process_ref(facts),
                detail=f"{decision.explanation} (seen by {sighting.source}){outcome}",
            )

        # Reported before this run (the agent restarted while it ran): never again.
        sighting_key = self._sighting_key(decision.rule_id, facts)
        if sighting_key and self.sightings is not None and self.sightings.seen(sighting_key):
            self.counts.add("already_reported")
            return None
        # The series a repeat folds into: the executable, or the name when it could not be
        # read (a zombie or a process exiting while it was read). A repeat is acted on without
        # waiting for its count's commit: its series' first event was committed before acting.
        recorded = self.repeats.record(
            (rule_key, facts.exe or f"comm:{facts.name}", facts.uid, facts.user),
            build,
            # one process under one rule is one occurrence whatever the action (its fork and
            # its exec, a sweep, a re-check: the same process, judged again)
            occurrence=(decision.rule_id, facts.pid, facts.start_time),
        )
        if recorded.kind != "duplicate" and sighting_key is not None and self.sightings:
            self.sightings.record(sighting_key)
        if recorded.kind == "first":
            if recorded.stored:
                self.counts.add(action)
            else:
                self.counts.add("unspooled")
                log.error(
                    "event for pid %s (rule %s) could not be spooled", facts.pid, decision.rule_id
                )
            log.info(
                "%s: pid %s %s (%s)",
                action,
                facts.pid,
                facts.name or facts.exe,
                decision.explanation,
            )
        return recorded.event

    def _sighting_key(self, rule_id: str, facts: ProcessFacts) -> str | None:
        """The process's identity across agent restarts (boot, pid, start in clock ticks)."""
        if self.sightings is None or facts.start_time is None:
            return None
        enricher = self.killer.enricher
        ticks = round((facts.start_time - enricher.boot_time) * enricher.ticks)
        return self.sightings.key(rule_id, facts.pid, ticks)

    def record_exec_denial(self, request: ExecRequest, verdict: ExecVerdict) -> None:
        """The exec guard's ``on_denied``: a ``process`` event for an exec it refused (or, in
        monitor mode, would have refused), folded per rule and executable."""
        facts = ProcessFacts(
            pid=request.pid,
            name=basename(request.path)[:COMM_MAX],
            exe=request.path,
            user=request.user or "",
            uid=request.uid,
            euid=request.euid,
            sha256=request.sha256,
        )
        severity = next(
            (d.severity for d in verdict.decisions if d.rule_id == verdict.rule_id), "high"
        )
        compiled = self.policy.compiled
        how = (
            "exec refused before start"
            if verdict.action == "denied"
            else "monitor: exec would have been refused"
        )

        def build() -> Event:
            return self.evidence.event(
                "process",
                rule=verdict.rule_id,
                action=verdict.action,
                severity=severity,
                judged_by=compiled,
                process=process_ref(facts),
                detail=f"{verdict.reason} ({how})",
            )

        # its own series: the process sensor's sighting of the same exec is another report
        series = ("exec", verdict.rule_id, verdict.action, request.path)
        recorded = self.repeats.record(series, build)
        if recorded.kind == "first" and not recorded.stored:
            self.counts.add("unspooled")

    def flush_repeats(self, *, force: bool = True) -> None:
        """Fold counted repeats into their events (the daemon's loop and shutdown call it)."""
        self.repeats.flush(force=force)

    def _enforce(
        self,
        compiled: CompiledPolicy,
        facts: ProcessFacts,
        decision: Decision,
        event: Event,
        *,
        pidfd: int = -1,
    ) -> None:
        rule = compiled.policy.rule(decision.rule_id)
        children = self.kill_children or bool(getattr(rule, "kill_children", False))
        env = session_env(facts.pid, self.killer.procfs) if self.notifier.enabled else {}
        outcome = self.killer.kill(facts.pid, facts.start_time, children=children, pidfd=pidfd)
        if outcome.killed:
            self.counts.add("kill_ok")
            self.notifier.tell(
                "Program stopped by Proscribe",
                f"{facts.name or facts.exe} (pid {facts.pid}) was stopped: {decision.message}",
                env=env,
                uid=facts.uid,
            )
            return
        if outcome.gone:
            self.counts.add("kill_target_gone")
            log.info("pid %s exited before it could be killed (%s)", facts.pid, outcome.reason)
            return
        self.counts.add("kill_failed")
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
        follow_up = self.evidence.event(
            "process",
            rule=decision.rule_id,
            action="failed",
            severity=decision.severity,
            judged_by=compiled,
            process=process_ref(facts),
            detail=f"kill not done: {outcome.reason}; outcome of event {event['id']}",
        )
        self.evidence.commit(follow_up)
