"""Managed browser policies kept in step with the policy in force, their tampering recorded.

:class:`BrowserGuard` is handed the policy changes (``PolicyChange``) and checked on the
daemon's status cadence; what it writes and where is ``enforce/browser_policy.py``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from proscribe.agent.evidence import Evidence
from proscribe.agent.policy_source import PolicyInForce
from proscribe.core.policy.matchers import CompiledPolicy

__all__ = ["BrowserGuard"]

log = logging.getLogger(__name__)


class BrowserGuard:
    def __init__(self, *, evidence: Evidence, policy: PolicyInForce, enforce: bool) -> None:
        from proscribe.agent.enforce.browser_policy import BrowserPolicies

        self.evidence = evidence
        self.policy = policy
        self.files = BrowserPolicies(enforce=enforce)
        self.tampered = 0

    def on_policy(self, compiled: CompiledPolicy) -> None:
        try:
            self.files.apply(compiled.policy)
        except Exception:
            log.exception("managed browser policies could not be written")

    def check(self) -> None:
        for line in self.files.check():
            self.tampered += 1
            log.warning("%s; restored", line)
            event = self.evidence.event(
                "tamper",
                rule=None,
                action="reported",
                severity="high",
                judged_by=self.policy.compiled,
                detail=f"{line}; the agent restored it",
            )
            if not self.evidence.commit(event):
                log.error("tamper event could not be spooled")

    def status(self) -> dict[str, Any]:
        return {**self.files.state, "tampered": self.tampered}


def build_browser_guard(
    enabled: bool, *, evidence: Evidence, policy: PolicyInForce, enforce: bool
) -> BrowserGuard | None:
    if not enabled or not sys.platform.startswith("linux"):
        return None
    return BrowserGuard(evidence=evidence, policy=policy, enforce=enforce)
