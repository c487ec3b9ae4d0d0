"""Exemptions: which (rule, host, user) combinations are allowed, and until when.

An exemption applies to a decision when all of these hold:

* it names the decision's rule, or ``"*"`` (every rule);
* it lists no hosts, or one of its host globs matches the host name (case-insensitive);
* it lists no users, or the user is one of them (exact; an unknown user is never exempt by name);
* it has no expiry, or ``now`` is before it.

When the policy itself has expired, exemptions are dropped altogether — bans keep being
enforced, and nobody keeps an exemption that was granted for a period that is over. ``now`` is
always passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from proscribe.core.policy.globs import compile_globs
from proscribe.core.policy.model import Exemption

ANY_RULE = "*"


@dataclass(frozen=True, slots=True)
class _Compiled:
    position: int  # in the policy: the first applicable exemption wins
    exemption: Exemption
    rules: frozenset[str]
    any_rule: bool
    hosts: re.Pattern[str] | None
    users: frozenset[str]


class ExemptionSet:
    """The exemptions of one policy, compiled; :meth:`find` returns the first that applies."""

    __slots__ = ("_by_rule", "_exemptions", "_policy_expires")

    def __init__(
        self, exemptions: Iterable[Exemption], policy_expires: datetime | None = None
    ) -> None:
        self._policy_expires = policy_expires
        self._exemptions = tuple(
            _Compiled(
                position=i,
                exemption=e,
                rules=frozenset(e.rules),
                any_rule=ANY_RULE in e.rules,
                hosts=compile_globs(e.hosts, path=False, ignore_case=True) if e.hosts else None,
                users=frozenset(e.users),
            )
            for i, e in enumerate(exemptions)
        )
        # rule id -> exemptions naming it (policy order); "*" exemptions are merged in.
        by_rule: dict[str, list[_Compiled]] = {}
        for c in self._exemptions:
            for rule_id in c.rules:
                by_rule.setdefault(rule_id, []).append(c)
        self._by_rule = by_rule

    def __len__(self) -> int:
        return len(self._exemptions)

    def policy_expired(self, now: datetime) -> bool:
        return self._policy_expires is not None and now >= self._policy_expires

    def find(self, rule_id: str, host: str, user: str | None, now: datetime) -> Exemption | None:
        """The first exemption (policy order) that allows ``rule_id`` here, or None."""
        if not self._exemptions or self.policy_expired(now):
            return None
        candidates = self._by_rule.get(rule_id, [])
        wildcard = self._by_rule.get(ANY_RULE, [])
        if wildcard:
            merged = {c.position: c for c in (*candidates, *wildcard)}
            candidates = [merged[p] for p in sorted(merged)]
        for c in candidates:
            e = c.exemption
            if e.expires is not None and now >= e.expires:
                continue
            if c.hosts is not None and not c.hosts.match(host):
                continue
            if c.users and (user is None or user not in c.users):
                continue
            return e
        return None

    def active(self, now: datetime) -> list[Exemption]:
        """Exemptions still in force at ``now`` (for status output)."""
        if self.policy_expired(now):
            return []
        return [
            c.exemption
            for c in self._exemptions
            if c.exemption.expires is None or now < c.exemption.expires
        ]
