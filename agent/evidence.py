"""Where the agent's events go: committed to the spool, then the reporter is woken.

Every event the agent records — a process start, a refused exec, a DNS question, a rejected
policy — is committed through one :class:`Evidence`, built before anything that records:

* it owns the ``host`` section every event carries (:class:`HostSection`: hostname, OS and the
  agent id the collector gave, read from the reporter's identity when there is one);
* :meth:`Evidence.event` builds an event stamped with that host and the policy it was judged by;
* :meth:`Evidence.commit` appends to the spool (durable before anything is done about the
  occurrence) and, when that worked, rings the reporter's doorbell (``wake``) so the event goes
  out within a second. The doorbell is a plain ``threading.Event`` the reporter is built to wait
  on, so nothing here needs the reporter, and no reporter at all is fine.

:class:`TamperRecorder` turns a rejected policy offer into a ``tamper`` event.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Protocol

from proscribe.core.events import Event, new_event
from proscribe.core.policy.bundle import Offer
from proscribe.core.policy.matchers.compiled import CompiledPolicy

__all__ = [
    "AgentIdSource",
    "EventStore",
    "Evidence",
    "HostSection",
    "TamperRecorder",
    "os_name",
    "policy_section",
]

log = logging.getLogger(__name__)


class EventStore(Protocol):
    """What :class:`Evidence` needs from the spool (``Spool`` satisfies it)."""

    def append(self, event: Event) -> bool: ...

    def bump_count(self, event_id: str, n: int = 1) -> bool: ...


class AgentIdSource(Protocol):
    """Who knows the id the collector gave this agent (the reporter's ``IdentityStore``)."""

    @property
    def agent_id(self) -> str | None: ...


def os_name() -> str:
    """The event schema's ``os``: linux, macos, windows (else the platform's own name)."""
    platform: str = sys.platform  # a plain str, so mypy does not prune the other branches
    for prefix, name in (("linux", "linux"), ("darwin", "macos"), ("win", "windows")):
        if platform.startswith(prefix):
            return name
    return platform


def policy_section(compiled: CompiledPolicy | None) -> dict[str, Any] | None:
    """The event schema's ``policy`` object: the policy an event was judged by."""
    if compiled is None:
        return None
    meta = compiled.policy.meta
    return {"id": meta.id, "serial": meta.serial, "sha256": compiled.policy.sha256}


class HostSection:
    """The event schema's ``host`` object for this agent."""

    def __init__(self, hostname: str, agent: AgentIdSource | None = None) -> None:
        self.hostname = hostname
        self._agent = agent
        self._os = os_name()

    def __call__(self) -> dict[str, Any]:
        agent_id = ""
        if self._agent is not None:
            agent_id = self._agent.agent_id or ""
        return {"agent_id": agent_id, "hostname": self.hostname, "os": self._os}


class Evidence:
    """Commits events to the spool and wakes the reporter; shared by everything that records."""

    def __init__(
        self, spool: EventStore, host: HostSection, wake: Callable[[], None] = lambda: None
    ) -> None:
        self.spool = spool
        self.host = host
        self._wake = wake

    def event(
        self,
        kind: str,
        *,
        rule: str | None,
        action: str,
        severity: str,
        judged_by: CompiledPolicy | None,
        detail: str,
        process: dict[str, Any] | None = None,
        dns: dict[str, Any] | None = None,
        file: dict[str, Any] | None = None,
    ) -> Event:
        """A new event (fresh id and time) from this host, judged by the policy ``judged_by``."""
        return new_event(
            kind,
            rule=rule,
            action=action,
            severity=severity,
            policy=policy_section(judged_by),
            host=self.host(),
            process=process,
            dns=dns,
            file=file,
            detail=detail,
        )

    def commit(self, event: Event) -> bool:
        """Append ``event``; True when it is durable (the reporter is then woken)."""
        try:
            stored = bool(self.spool.append(event))
        except Exception:
            log.exception("spool append failed")
            return False
        if stored:
            self._wake()
        return stored

    def bump(self, event_id: str, n: int) -> bool:
        """Add ``n`` to the count of an unsent event; False when it was sent (or is gone)."""
        try:
            return bool(self.spool.bump_count(event_id, n))
        except Exception:
            log.exception("spool bump_count failed")
            return False


class TamperRecorder:
    """``PolicySource``'s ``on_tamper``: a rejected policy becomes a committed ``tamper`` event;
    enforcement goes on unchanged with the policy still in force."""

    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence

    def __call__(self, offer: Offer, in_force: CompiledPolicy | None) -> None:
        event = self.evidence.event(
            "tamper",
            rule=None,
            action="reported",
            severity="critical",
            judged_by=in_force,
            detail=f"policy rejected ({offer.kind}): {offer.reason}",
        )
        if not self.evidence.commit(event):
            log.error("tamper event could not be spooled")
