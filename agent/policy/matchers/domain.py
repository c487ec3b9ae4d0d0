"""Domain matching: a label walk over one hash table.

Every list entry is stored as a plain ``str`` key in a single ``dict`` whose value is a small
int (a *code*: the rule's index shifted left by one, low bit set for an "=exact" entry). Small
ints are shared objects in CPython, so an entry costs one string plus one dict slot and nothing
else; a million names fit in roughly 100 MB.

A query ``chat.api.deepseek.com`` is looked up as ``chat.api.deepseek.com``, then
``api.deepseek.com``, ``deepseek.com``, ``com``: one hash probe per label, independent of the
size of the list. Because only whole labels are stripped, ``notdeepseek.com`` never matches
``deepseek.com``. An exact entry only counts on the first probe (the full query name).

The rare name listed by several rules (or both exactly and with subdomains) keeps one code per
listing in a side table, so every rule that lists a name can be reported and exempted on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from proscribe.agent.policy.model import DomainRule
from proscribe.agent.policy.names import normalize_query

EXACT_PREFIX = "="


@dataclass(frozen=True, slots=True)
class DomainMatch:
    """Why a query name matched: which rule, which list entry, and whether it was exact."""

    rule_index: int  # position of the rule in the rules the matcher was built from
    rule_id: str
    entry: str  # the list entry as written in the policy ("deepseek.com" or "=host.example")
    matched_name: str  # the suffix of the query that equals the entry's name
    query: str  # the normalized query name
    exact: bool

    @property
    def explanation(self) -> str:
        if self.exact:
            return f"exact name {self.entry!r} matched query {self.query!r}"
        if self.matched_name == self.query:
            return f"domain {self.entry!r} matched query {self.query!r}"
        return f"domain {self.entry!r} matched query {self.query!r} (subdomain)"


class DomainMatcher:
    """Denied domain names from one or more rules; ``match`` walks the query's labels."""

    __slots__ = ("_codes", "_multi", "_rule_ids")

    def __init__(self) -> None:
        # name -> code (>= 0), or -(1 + i) pointing at _multi[i] when listed more than once.
        self._codes: dict[str, int] = {}
        self._multi: list[list[int]] = []
        self._rule_ids: list[str] = []

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_rules(cls, rules: Iterable[DomainRule]) -> DomainMatcher:
        """Build from policy rules, whose names the loader has already normalized."""
        matcher = cls()
        for rule in rules:
            matcher._add_rule(rule.id, rule.names)
        return matcher

    @classmethod
    def from_names(cls, names: Iterable[str], rule_id: str = "list") -> DomainMatcher:
        """Build one rule's matcher from raw names (benchmarks, lists); folds case and root dot."""
        matcher = cls()
        matcher._add_rule(rule_id, (n.strip().lower().rstrip(".") for n in names))
        return matcher

    def _add_rule(self, rule_id: str, names: Iterable[str]) -> None:
        index = len(self._rule_ids)
        self._rule_ids.append(rule_id)
        base = index << 1
        codes = self._codes
        for entry in names:
            exact = entry.startswith(EXACT_PREFIX)
            name = entry[1:] if exact else entry
            if not name:
                continue
            code = base | 1 if exact else base
            old = codes.get(name)
            if old is None:
                codes[name] = code
            elif old >= 0:
                if old != code:
                    self._multi.append([old, code])
                    codes[name] = -len(self._multi)
            elif code not in self._multi[-old - 1]:
                self._multi[-old - 1].append(code)

    # -- querying ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._codes)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(self._rule_ids)

    def contains(self, qname: str) -> bool:
        """Fast yes/no (no result object); ``qname`` must already be normalized."""
        codes = self._codes
        name = qname
        code = codes.get(name)
        if code is not None:
            return True
        while True:
            dot = name.find(".")
            if dot < 0:
                return False
            name = name[dot + 1 :]
            code = codes.get(name)
            if code is not None and self._covers_subdomains(code):
                return True

    def _covers_subdomains(self, code: int) -> bool:
        if code >= 0:
            return not code & 1
        return any(not c & 1 for c in self._multi[-code - 1])

    def match(self, qname: str) -> DomainMatch | None:
        """The most specific listing that covers ``qname`` (case/root dot/IDNA folded)."""
        for found in self.match_all(qname):
            return found
        return None

    def match_all(self, qname: str) -> Iterator[DomainMatch]:
        """Every listing covering ``qname``, most specific name first, rules in policy order."""
        query = normalize_query(qname)
        if not query:
            return
        codes = self._codes
        name = query
        first = True
        while True:
            code = codes.get(name)
            if code is not None:
                for c in (code,) if code >= 0 else self._multi[-code - 1]:
                    exact = bool(c & 1)
                    if exact and not first:
                        continue
                    yield DomainMatch(
                        rule_index=c >> 1,
                        rule_id=self._rule_ids[c >> 1],
                        entry=EXACT_PREFIX + name if exact else name,
                        matched_name=name,
                        query=query,
                        exact=exact,
                    )
            dot = name.find(".")
            if dot < 0:
                return
            name = name[dot + 1 :]
            first = False
