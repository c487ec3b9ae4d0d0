"""Domain matching: a label walk over one hash table.

Every list entry is stored as a plain ``str`` key in a single ``dict`` whose value is a small
int (a *code*: the rule's index shifted left by one, low bit set for an "=exact" entry). Small
ints are shared objects in CPython, so an entry costs one string plus one dict slot and nothing
else: about 108 bytes per name, 103 MiB for a million (``bench/match.py``).

A query is walked from its last label to its first — ``com``, ``deepseek.com``,
``api.deepseek.com``, ``chat.api.deepseek.com`` — one hash probe per label, and the most specific
(longest) listed suffix wins. Because only whole labels are compared, ``notdeepseek.com`` never
matches ``deepseek.com``; an exact entry only counts for the full query name.

The walk stops early at the first suffix that no listed name ends with. To know that without
storing every parent name as another string (which cost 40% more memory at 1M names), a
*suffix filter* records the hashes of all proper suffixes of listed names (``deepseek.com`` and
``com`` for ``chat.deepseek.com``) in a byte table about 8 times larger than the list has names:
a suffix absent from the filter is certainly no listed name's parent, so the walk stops; a false
"present" (about 1 in 8) only costs one more probe. A lookup is therefore O(labels) probes,
independent of the list size, and in practice about the depth of the listed names plus one,
which keeps a 120-label query as cheap as a 3-label one.

The rare name listed by several rules (or both exactly and with subdomains) keeps one code per
listing in a side table, so every rule that lists a name can be reported and exempted on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from proscribe.core.policy.model import DomainRule
from proscribe.core.policy.names import normalize_query

EXACT_PREFIX = "="
_new_tuple = tuple.__new__
_FILTER_BYTES_PER_NAME = 8


class DomainMatch(NamedTuple):
    """Why a query name matched: which rule, which list entry, and whether it was exact.

    A named tuple rather than a dataclass: it is built on the DNS hot path, where a frozen
    dataclass costs three times as much to construct.
    """

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

    __slots__ = ("_codes", "_filter", "_mask", "_multi", "_rule_ids")

    def __init__(self) -> None:
        # name -> code (>= 0), or -(1 + i) pointing at _multi[i] when listed more than once.
        self._codes: dict[str, int] = {}
        self._multi: list[list[int]] = []
        self._rule_ids: list[str] = []
        self._filter = b"\x00"
        self._mask = 0

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_rules(cls, rules: Iterable[DomainRule]) -> DomainMatcher:
        """Build from policy rules, whose names the loader has already normalized."""
        matcher = cls()
        for rule in rules:
            matcher._add_rule(rule.id, rule.names)
        matcher._build_filter()
        return matcher

    @classmethod
    def from_names(cls, names: Iterable[str], rule_id: str = "list") -> DomainMatcher:
        """Build one rule's matcher from raw names (benchmarks, lists); folds case and root dot."""
        matcher = cls()
        matcher._add_rule(rule_id, (n.strip().lower().rstrip(".") for n in names))
        matcher._build_filter()
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

    def _build_filter(self) -> None:
        size = 1024
        while size < _FILTER_BYTES_PER_NAME * len(self._codes):
            size <<= 1
        mask = size - 1
        table = bytearray(size)
        for name in self._codes:
            dot = name.find(".")
            while dot >= 0:
                table[hash(name[dot + 1 :]) & mask] = 1
                dot = name.find(".", dot + 1)
        self._filter = bytes(table)
        self._mask = mask

    # -- querying ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Distinct listed names."""
        return len(self._codes)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(self._rule_ids)

    def contains(self, qname: str) -> bool:
        """Fast yes/no (no result object); ``qname`` must already be normalized."""
        return self._walk(qname, stop_at_first=True) is not None

    def match(self, qname: str) -> DomainMatch | None:
        """The most specific listing that covers ``qname`` (case/root dot/IDNA folded)."""
        if qname.isascii():
            query = qname.lower()
            if query.endswith("."):
                query = query.rstrip(".")
        else:
            query = normalize_query(qname)
        # The walk of _walk(), inlined: this is the DNS hot path and a call costs ~10%.
        get = self._codes.get
        labels = query.split(".")
        i = len(labels) - 1
        name = labels[i]
        best: str | None = None
        best_code = 0
        while True:
            code = get(name)
            if code is not None:
                if i == 0:
                    best, best_code = name, code  # the full name: exact entries count too
                    break
                if code >= 0:
                    if not code & 1:
                        best, best_code = name, code
                elif any(not c & 1 for c in self._multi[-code - 1]):
                    best, best_code = name, code
            elif not self._filter[hash(name) & self._mask]:
                break  # no listed name ends with this suffix
            if i == 0:
                break
            i -= 1
            name = f"{labels[i]}.{name}"
        if best is None:
            return None
        name, code = best, best_code
        if code >= 0:  # the usual case: one listing (exact codes are kept only for the full name)
            exact = bool(code & 1)
            index = code >> 1
            entry = EXACT_PREFIX + name if exact else name
            # tuple.__new__ skips the named tuple's Python-level __new__ on this hot path
            return _new_tuple(
                DomainMatch, (index, self._rule_ids[index], entry, name, query, exact)
            )
        full = len(name) == len(query)
        for c in self._multi[-code - 1]:
            exact = bool(c & 1)
            if exact and not full:
                continue
            index = c >> 1
            entry = EXACT_PREFIX + name if exact else name
            return DomainMatch(index, self._rule_ids[index], entry, name, query, exact)
        return None  # pragma: no cover - _walk only reports codes that cover the name

    def _walk(self, query: str, *, stop_at_first: bool) -> tuple[str, int] | None:
        """``(name, code)`` of the longest (or, if asked, the first) listed suffix, or None.

        The hot path of the DNS sensors. The query is split once (one C call) and the suffixes
        are rebuilt label by label from the right; measured here, that is twice as fast as
        ``rfind`` and slicing.
        """
        get = self._codes.get
        table = self._filter
        mask = self._mask
        labels = query.split(".")
        i = len(labels) - 1
        name = labels[i]
        best: tuple[str, int] | None = None
        while True:
            code = get(name)
            if code is not None:
                if i == 0:
                    return (name, code)  # the full name: exact entries count too
                if code >= 0:
                    if not code & 1:
                        best = (name, code)
                elif any(not c & 1 for c in self._multi[-code - 1]):
                    best = (name, code)
                if stop_at_first and best is not None:
                    return best
            elif not table[hash(name) & mask]:
                return best  # no listed name ends with this suffix
            if i == 0:
                return best
            i -= 1
            name = f"{labels[i]}.{name}"

    def match_all(self, qname: str) -> Iterator[DomainMatch]:
        """Every listing covering ``qname``, most specific name first, rules in policy order."""
        query = normalize_query(qname)
        if not query:
            return
        labels = query.split(".")
        for i in range(len(labels)):
            name = ".".join(labels[i:])
            code = self._codes.get(name)
            if code is None:
                continue
            for c in (code,) if code >= 0 else self._multi[-code - 1]:
                exact = bool(c & 1)
                if exact and i:
                    continue
                entry = EXACT_PREFIX + name if exact else name
                yield DomainMatch(c >> 1, self._rule_ids[c >> 1], entry, name, query, exact)
