"""Command-line regexes that cannot hang the agent.

Process rules carry regexes searched in a process's joined command line, and that text is chosen
by whoever starts the process. Python's ``re`` is a backtracking engine, so a careless pattern
such as ``(a+)+$`` or ``(\\w+\\s?)*$`` takes exponential time on a crafted input, and even two
open-ended repeats in sequence (``a.*b.*c``) take cubic time. We keep ``re`` (no new runtime
dependency, the same syntax admins know) and bound the work instead, in three ways:

1. **The input is bounded.** The matcher searches at most :data:`MAX_CMDLINE_MATCH_CHARS`
   characters (:func:`cmdline_window` keeps the head and the tail of a longer command line,
   where the program and its model argument are).
2. **The pattern's shape is restricted** when it is compiled, once per policy: at most
   :data:`MAX_PATTERN_CHARS` characters; no backreferences, lookahead/lookbehind or
   conditionals (they defeat the analysis below and are never needed for a denylist); no repeat
   of something that itself repeats or alternates (``(a+)+``, ``(a*)*b``, ``(a|aa)+``): that
   is what makes backtracking exponential.
3. **The remaining polynomial degree is capped.** With the shapes above, backtracking explores
   at most one choice per repeat, so the work of a search is bounded by the number of start
   positions (``n``) times the product, over the repeats that can backtrack, of how many
   lengths each may take (``n + 1`` for an open-ended one, ``max + 1`` for ``{m,max}``). We
   require that product to stay under ``16 * (n + 1)``: one open-ended repeat (``.*``, ``\\S+``)
   plus small bounded ones, i.e. worst case about ``16 * n**2`` steps for ``n = 2048``.

   A repeat does *not* count when it cannot backtrack usefully: it is possessive (``\\s++``),
   or its body is one character class and the next thing the pattern needs is a literal
   character that class cannot match (``\\s+run``, ``\\d+\\.``): any shorter match would leave
   a class character where the literal must be, so only the longest match can succeed, and the
   run it scans is disjoint from the runs of other such repeats.

The result: the time of one search is bounded by a small multiple of ``n**2`` simple steps
whatever the input; ``tests/unit/test_regex_safety.py`` measures every pattern in the shipped
packs and a set of realistic ones against adversarial inputs of full length.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from re import _compiler as sre_compile  # type: ignore[attr-defined]
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MAX_PATTERN_CHARS = 512
MAX_CMDLINE_MATCH_CHARS = 2048
MAX_REPEATS = 16  # repeats of any kind in one pattern
_COST_BUDGET = 16 * (MAX_CMDLINE_MATCH_CHARS + 1)

_SINGLE_CHAR_OPS = frozenset({sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN})
_REPEAT_OPS = frozenset({sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT})

_Item = tuple[Any, Any]


def compile_cmdline_regex(pattern: str) -> re.Pattern[str]:
    """Compile a command-line regex after checking that it cannot backtrack without bound.

    Raises ``ValueError`` with one sentence saying what is wrong and what to write instead.
    """
    if not isinstance(pattern, str):
        raise ValueError("a command-line pattern must be a string")
    if not pattern:
        raise ValueError("empty pattern (it would match every command line)")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(
            f"pattern is {len(pattern)} characters, the limit is {MAX_PATTERN_CHARS}; "
            "split it into several patterns"
        )
    if "\x00" in pattern:
        raise ValueError("pattern contains a NUL character")
    try:
        compiled = re.compile(pattern)
        parsed = sre_parse.parse(pattern, 0)
    except re.error as err:
        raise ValueError(f"not a valid regular expression: {err}") from err
    except (RecursionError, OverflowError) as err:
        raise ValueError("regular expression is nested too deeply") from err
    checker = _ShapeCheck(parsed.state)
    cost = checker.sequence(list(parsed.data), parsed.state.flags, top=True)
    if checker.repeats > MAX_REPEATS:
        raise ValueError(
            f"pattern has {checker.repeats} repeats, the limit is {MAX_REPEATS}; simplify it"
        )
    if cost > _COST_BUDGET:
        raise ValueError(
            "pattern could take too long on a long command line: it has more than one "
            "open-ended repeat (.*, \\S+, …) that can backtrack; keep one, and make the "
            "others bounded and small ({0,8}) or follow them by a character they cannot match"
        )
    for probe in ("", "x", " ", "-"):
        found = compiled.search(probe)
        if found is not None and found.start() == found.end():
            # "(?:)", "x*" or "^$" would match every process (kernel threads have no cmdline).
            raise ValueError("pattern can match empty text, so it would match every process")
    return compiled


def cmdline_window(argv: Sequence[str]) -> str:
    """The text a command-line regex is searched in: arguments joined by spaces, at most
    :data:`MAX_CMDLINE_MATCH_CHARS` characters.

    A longer command line keeps its head and its tail (the program is at the start, the
    model or file argument usually at the end), joined by a space, so padding the middle of a
    command line does not push those out of view.
    """
    text = " ".join(argv)
    if len(text) <= MAX_CMDLINE_MATCH_CHARS:
        return text
    half = (MAX_CMDLINE_MATCH_CHARS - 1) // 2
    return text[:half] + " " + text[-(MAX_CMDLINE_MATCH_CHARS - 1 - half) :]


class _ShapeCheck:
    """Walks an ``sre`` parse tree, rejects unsafe constructs and estimates the cost factor."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.repeats = 0

    def sequence(self, items: list[_Item], flags: int, *, top: bool = False) -> int:
        cost = 1
        for index, (op, av) in enumerate(items):
            if op in (sre.GROUPREF, sre.GROUPREF_IGNORE, sre.GROUPREF_LOC_IGNORE):
                raise ValueError("backreferences (\\1, (?P=name)) are not allowed")
            if op is sre.GROUPREF_EXISTS:
                raise ValueError("conditional groups (?(1)…|…) are not allowed")
            if op in (sre.ASSERT, sre.ASSERT_NOT):
                raise ValueError(
                    "lookahead and lookbehind ((?=…), (?!…), (?<=…), (?<!…)) are not allowed"
                )
            if op is sre.SUBPATTERN:
                _group, add, remove, sub = av
                cost *= self.sequence(list(sub.data), (flags | add) & ~remove)
            elif op is sre.ATOMIC_GROUP:
                cost *= self.sequence(list(av.data), flags)
            elif op is sre.BRANCH:
                cost *= max(self.sequence(list(b.data), flags) for b in av[1])
            elif op in _REPEAT_OPS:
                cost *= self.repeat(op, av, items[index + 1 :], flags, at_end=top)
            if cost > _COST_BUDGET:
                return cost
        return cost

    def repeat(self, op: Any, av: Any, rest: list[_Item], flags: int, *, at_end: bool) -> int:
        _low, high, body = av
        self.repeats += 1
        body_items = list(body.data)
        if high > 1 and _contains(body_items, lambda o, a: o in _REPEAT_OPS and a[1] > 1):
            raise ValueError(
                "a repeated group contains another repeat, e.g. (a+)+ or (\\w+\\s?)*: this can "
                "take exponential time; repeat a single character class instead"
            )
        if high > 1 and _contains(body_items, lambda o, a: o is sre.BRANCH):
            raise ValueError(
                "a repeated group contains alternatives, e.g. (a|ab)+: this can take "
                "exponential time; use a character class [ab] or list whole patterns"
            )
        inner = self.sequence(body_items, flags)
        if op is sre.POSSESSIVE_REPEAT:
            return inner  # never gives back what it took
        if self._cannot_backtrack(body_items, rest, flags, at_end=at_end):
            return 1
        lengths = MAX_CMDLINE_MATCH_CHARS + 1 if high is sre.MAXREPEAT else high + 1
        return lengths * inner

    def _cannot_backtrack(
        self, body: list[_Item], rest: list[_Item], flags: int, *, at_end: bool
    ) -> bool:
        """True when only the longest match of the repeat can lead to success."""
        if len(body) != 1 or body[0][0] not in _SINGLE_CHAR_OPS:
            return False
        follow = _first_required(rest)
        if follow is None:
            # Nothing after it at the top level: the first (longest) try succeeds.
            return at_end and not rest
        if follow[0] is not sre.LITERAL:
            return False
        body_re = self._compile_item(body[0], flags)
        return not any(body_re.fullmatch(ch) for ch in _literal_variants(follow[1], flags))

    def _compile_item(self, item: _Item, flags: int) -> re.Pattern[str]:
        sub = sre_parse.SubPattern(self.state, [item])
        compiled: re.Pattern[str] = sre_compile.compile(sub, flags)
        return compiled


def _first_required(rest: list[_Item]) -> _Item | None:
    """The first single-character item the pattern must match after a repeat, if obvious."""
    for op, av in rest:
        if op in _SINGLE_CHAR_OPS:
            return (op, av)
        if op is sre.SUBPATTERN and av[3].data:
            return _first_required(list(av[3].data))
        return None  # a repeat, branch, anchor or empty group: not obvious, assume the worst
    return None


@functools.lru_cache(maxsize=512)
def _literal_variants(code: int, flags: int) -> tuple[str, ...]:
    """Every character a literal matches under ``flags`` (case folding included)."""
    char = chr(code)
    if not flags & re.IGNORECASE:
        return (char,)
    literal = re.compile(re.escape(char), flags & (re.IGNORECASE | re.ASCII | re.UNICODE))
    # Case folds of a character never leave the Basic Multilingual Plane for a BMP literal
    # (and stay in their own block otherwise), so scanning the BMP plus the literal's own
    # neighbourhood finds them all.
    found = {char}
    candidates = range(0x10000) if code < 0x10000 else range(code - 0x80, code + 0x80)
    for point in candidates:
        if literal.fullmatch(chr(point)):
            found.add(chr(point))
    return tuple(sorted(found))


def _contains(items: list[_Item], wanted: Any) -> bool:
    for op, av in items:
        if wanted(op, av):
            return True
        if op is sre.SUBPATTERN and _contains(list(av[3].data), wanted):
            return True
        if op is sre.ATOMIC_GROUP and _contains(list(av.data), wanted):
            return True
        if op is sre.BRANCH and any(_contains(list(b.data), wanted) for b in av[1]):
            return True
        if op in _REPEAT_OPS and _contains(list(av[2].data), wanted):
            return True
    return False
